//! Supervised native processes.
//!
//! Each workload gets a supervisor task that owns its process: it spawns the program in its own
//! process group and, when the system allows it, its own cgroup (so that stopping it ends every
//! descendant, also those that left the group with `setsid`), with stdout and stderr going through a
//! pipe to a log writer process (`lasctl log-writer`, see [`super::logwriter`]) that appends to
//! `$LAS_HOME/logs/<owner>.log` and rotates by rename within the size cap, records the pid and the
//! kernel's start time in the `native_processes` table, probes health, and restarts by policy
//! with exponential backoff and jitter. The supervisor itself never does log IO.
//!
//! The process outlives the program: when the program restarts, `ensure` finds the record,
//! checks that the pid still names the same process (same start time in `/proc/<pid>/stat`, so a
//! reused pid is never mistaken for ours) and adopts it, or cleans the stale record up.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::Instrument;

use super::health::{HealthMonitor, ProbeFn, probe_once};
use super::limits::{self, Applied};
use super::{
    EventStream, LogOptions, LogStream, OwnerKey, Program, Runtime, RuntimeError, WorkloadEvent,
    WorkloadSpec, WorkloadState, WorkloadStatus, jitter_unit,
};
use crate::api::module::{RestartPolicy, RuntimeKind};
use crate::home::LasHome;

/// Tunables of the native runtime. `NativeConfig::for_home` has the production values.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    pub logs_dir: PathBuf,
    /// The cap of a workload's log: `<owner>.log` and its rotated `<owner>.log.1` together hold at
    /// most this (plus one read buffer).
    pub log_max_bytes: u64,
    /// The `lasctl` executable that runs the log writer. `None` (a program that is not `lasctl`,
    /// such as a test binary): output is appended to the log file directly and the cap is only
    /// checked every `rotate_check` (by truncation).
    pub log_writer: Option<PathBuf>,
    /// First restart delay; doubles per consecutive failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A process that ran at least this long resets the backoff.
    pub healthy_reset: Duration,
    /// Grace period used when the runtime itself replaces a process (spec change, liveness).
    pub replace_grace: Duration,
    /// How often an adopted process (not our child) is checked for exit.
    pub adopted_poll: Duration,
    /// How often the log file size is checked.
    pub rotate_check: Duration,
}

impl NativeConfig {
    pub fn for_home(home: &LasHome) -> Self {
        Self {
            logs_dir: home.logs(),
            log_max_bytes: 10 * 1024 * 1024,
            log_writer: std::env::current_exe()
                .ok()
                .filter(|p| p.file_name().is_some_and(|n| n == "lasctl")),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            healthy_reset: Duration::from_secs(60),
            replace_grace: Duration::from_secs(10),
            adopted_poll: Duration::from_secs(1),
            rotate_check: Duration::from_secs(10),
        }
    }
}

/// What is remembered about a running native process, in `native_processes.record` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeRecord {
    pub owner: OwnerKey,
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot): tells a reused pid apart.
    pub start_time: u64,
    pub spec_hash: String,
    pub spec: WorkloadSpec,
    pub log_path: PathBuf,
    pub limits_applied: String,
    pub restarts: u32,
    /// The cgroup holding the process and its descendants, when one could be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// Where native records live. The real one is [`SqliteNativeStore`]; [`MemoryNativeStore`] is for
/// unit tests of code above the runtime.
pub trait NativeStore: Send + Sync {
    fn load(&self, owner: &OwnerKey) -> Result<Option<NativeRecord>, RuntimeError>;
    fn all(&self) -> Result<Vec<NativeRecord>, RuntimeError>;
    fn save(&self, rec: &NativeRecord) -> Result<(), RuntimeError>;
    fn delete(&self, owner: &OwnerKey) -> Result<(), RuntimeError>;
}

/// The `native_processes` table of the state database, through its own connection (the runtime
/// does not depend on the control layer's store).
///
/// # Caveats
/// The table is created by the control store's migration 1; opening a database without it fails
/// with a message saying so (the runtime never creates tables it does not own the schema of).
pub struct SqliteNativeStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteNativeStore {
    pub fn open(path: &Path) -> Result<Self, RuntimeError> {
        let err = |reason: String| RuntimeError::Store {
            path: path.to_path_buf(),
            reason,
        };
        let conn = Connection::open(path).map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| err(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(e.to_string()))?;
        let has: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'native_processes'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| err(e.to_string()))?;
        if has.is_none() {
            return Err(err(
                "table native_processes is missing: the state database is created by the control store (run any lasctl verb first)".into(),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RuntimeError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|e| RuntimeError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn decode(&self, text: String) -> Result<NativeRecord, RuntimeError> {
        serde_json::from_str(&text).map_err(|e| RuntimeError::Store {
            path: self.path.clone(),
            reason: format!("a record is not valid JSON: {e}"),
        })
    }
}

impl NativeStore for SqliteNativeStore {
    fn load(&self, owner: &OwnerKey) -> Result<Option<NativeRecord>, RuntimeError> {
        let text: Option<String> = self.with(|c| {
            c.query_row(
                "SELECT record FROM native_processes WHERE owner = ?1",
                [owner.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        text.map(|t| self.decode(t)).transpose()
    }

    fn all(&self) -> Result<Vec<NativeRecord>, RuntimeError> {
        let texts: Vec<String> = self.with(|c| {
            let mut st = c.prepare("SELECT record FROM native_processes ORDER BY owner")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        texts.into_iter().map(|t| self.decode(t)).collect()
    }

    fn save(&self, rec: &NativeRecord) -> Result<(), RuntimeError> {
        let text = serde_json::to_string(rec).map_err(|e| RuntimeError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.with(|c| {
            c.execute(
                "INSERT INTO native_processes (owner, pid, start_time, spec_hash, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(owner) DO UPDATE SET pid = ?2, start_time = ?3, spec_hash = ?4, record = ?5",
                params![
                    rec.owner.as_str(),
                    rec.pid,
                    rec.start_time as i64,
                    rec.spec_hash,
                    text
                ],
            )
            .map(|_| ())
        })
    }

    fn delete(&self, owner: &OwnerKey) -> Result<(), RuntimeError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM native_processes WHERE owner = ?1",
                [owner.as_str()],
            )
            .map(|_| ())
        })
    }
}

/// An in-memory [`NativeStore`] for unit tests.
#[derive(Default)]
pub struct MemoryNativeStore(Mutex<BTreeMap<OwnerKey, NativeRecord>>);

impl NativeStore for MemoryNativeStore {
    fn load(&self, owner: &OwnerKey) -> Result<Option<NativeRecord>, RuntimeError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(owner)
            .cloned())
    }
    fn all(&self) -> Result<Vec<NativeRecord>, RuntimeError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }
    fn save(&self, rec: &NativeRecord) -> Result<(), RuntimeError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.owner.clone(), rec.clone());
        Ok(())
    }
    fn delete(&self, owner: &OwnerKey) -> Result<(), RuntimeError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(owner);
        Ok(())
    }
}

/// `(start_time, process group, state)` from `/proc/<pid>/stat`, `None` when there is no such pid.
pub fn proc_stat(pid: u32) -> Option<(u64, i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let pgrp = f.get(2)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((start, pgrp, state))
}

/// Whether `pid` is alive and is the process that started at `start_time`.
pub fn same_process_alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((st, _, state)) if st == start_time && state != 'Z' && state != 'X')
}

enum Proc {
    Child {
        child: tokio::process::Child,
        pid: u32,
        /// The `lasctl log-writer` reading this child's output (reaped when it ends).
        log_writer: Option<Box<tokio::process::Child>>,
    },
    Adopted {
        pid: u32,
        start_time: u64,
        poll: Duration,
    },
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Child { pid, .. } | Proc::Adopted { pid, .. } => *pid,
        }
    }

    /// Waits for the exit; the code (128+signal for a signal) when known.
    async fn wait(&mut self) -> Option<i64> {
        match self {
            Proc::Child { child, .. } => match child.wait().await {
                Ok(st) => {
                    use std::os::unix::process::ExitStatusExt;
                    st.code()
                        .map(i64::from)
                        .or_else(|| st.signal().map(|s| 128 + i64::from(s)))
                }
                Err(_) => None,
            },
            Proc::Adopted {
                pid,
                start_time,
                poll,
            } => {
                while same_process_alive(*pid, *start_time) {
                    tokio::time::sleep(*poll).await;
                }
                None
            }
        }
    }

    /// Waits (at most `limit`) for the log writer to drain the pipe and exit, so the log is
    /// complete (and removable) afterwards.
    async fn reap_log_writer(&mut self, limit: Duration) {
        if let Proc::Child {
            log_writer: Some(w),
            ..
        } = self
        {
            let _ = tokio::time::timeout(limit, w.wait()).await;
        }
    }

    /// SIGTERM to the group, SIGKILL after `grace`; returns the exit code. Reaps our child.
    async fn terminate(&mut self, grace: Duration) -> Option<i64> {
        let pid = self.pid();
        // pid 0 would mean "our own group": never signal it.
        if pid == 0 {
            return None;
        }
        let pgid = Pid::from_raw(pid as i32);
        // An adopted pid must still lead its own group, else only it is signalled.
        let leads_group = match self {
            Proc::Child { .. } => true,
            Proc::Adopted { .. } => proc_stat(pid).is_some_and(|(_, g, _)| g == pid as i32),
        };
        let signal = |s: Signal| {
            let _ = if leads_group {
                killpg(pgid, s)
            } else {
                nix::sys::signal::kill(pgid, s)
            };
        };
        signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(code) => {
                // The leader is gone; make sure nothing else of its group lingers.
                signal(Signal::SIGKILL);
                code
            }
            Err(_) => {
                tracing::info!(pid = pgid.as_raw(), "grace period over; sending SIGKILL");
                signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

enum Cmd {
    Stop {
        grace: Duration,
        done: oneshot::Sender<()>,
    },
}

struct Supervisor {
    spec_hash: String,
    status: watch::Receiver<WorkloadStatus>,
    cmd: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The native-process [`Runtime`].
///
/// # Guarantees
/// - Processes run in their own process group; stop and replacement signal the whole group.
/// - Dropping the runtime leaves its processes running and recorded, so that the next program
///   re-adopts them; only `stop`/`remove` end them.
/// - Our own children are always reaped (no zombies).
///
/// # Caveats
/// - An adopted process is not our child: its exit code is unknown (`last_exit_code` stays `None`)
///   and its exit is noticed by polling `/proc` every `adopted_poll`.
/// - Memory and CPU limits use cgroup v2 when this program may create cgroups, else `RLIMIT_AS`
///   for memory only; `limits_applied` says which.
pub struct NativeRuntime {
    cfg: NativeConfig,
    store: Arc<dyn NativeStore>,
    sups: Mutex<HashMap<OwnerKey, Supervisor>>,
    locks: Mutex<HashMap<OwnerKey, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<WorkloadEvent>,
}

impl NativeRuntime {
    /// The production runtime: records in `$LAS_HOME/state.db`, logs in `$LAS_HOME/logs/`.
    pub fn open(home: &LasHome) -> Result<Self, RuntimeError> {
        let store = SqliteNativeStore::open(&home.state_db())?;
        Ok(Self::new(NativeConfig::for_home(home), Arc::new(store)))
    }

    pub fn new(cfg: NativeConfig, store: Arc<dyn NativeStore>) -> Self {
        Self {
            cfg,
            store,
            sups: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            events: broadcast::channel(256).0,
        }
    }

    async fn lock(&self, key: &OwnerKey) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    fn sups(&self) -> std::sync::MutexGuard<'_, HashMap<OwnerKey, Supervisor>> {
        self.sups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_path(&self, key: &OwnerKey) -> PathBuf {
        self.cfg.logs_dir.join(format!("{}.log", key.slug()))
    }

    async fn stop_supervisor(sup: Supervisor, grace: Duration) {
        let Supervisor { cmd, task, .. } = sup;
        let (tx, rx) = oneshot::channel();
        if cmd.send(Cmd::Stop { grace, done: tx }).await.is_ok() {
            let _ = rx.await;
        }
        drop(cmd);
        let _ = task.await;
    }

    async fn ensure_inner(&self, spec: &WorkloadSpec) -> Result<WorkloadStatus, RuntimeError> {
        let key = spec.owner.key();
        let hash = spec.spec_hash();
        let _g = self.lock(&key).await;

        let existing = self.sups().remove(&key);
        if let Some(sup) = existing {
            let st = sup.status.borrow().clone();
            if sup.spec_hash == hash && !sup.finished() {
                // Exited means finished by its restart policy: ensure leaves it so (a reconcile
                // loop must not turn `Never` into `Always`). Stopped on request: start again.
                let keep = st.state != WorkloadState::Stopped;
                if keep {
                    self.sups().insert(key, sup);
                    return Ok(st);
                }
            }
            tracing::info!(owner = %key, "replacing native process");
            Self::stop_supervisor(sup, self.cfg.replace_grace).await;
        }

        let mut restarts = 0;
        if let Some(rec) = self.store.load(&key)? {
            if same_process_alive(rec.pid, rec.start_time) {
                if rec.spec_hash == hash {
                    tracing::info!(owner = %key, pid = rec.pid, "adopting native process");
                    let proc = Proc::Adopted {
                        pid: rec.pid,
                        start_time: rec.start_time,
                        poll: self.cfg.adopted_poll,
                    };
                    let st = self.start_supervisor(spec, proc, rec.clone(), rec.restarts);
                    return Ok(st);
                }
                tracing::info!(owner = %key, pid = rec.pid, "recorded process has another spec; replacing it");
                let mut p = Proc::Adopted {
                    pid: rec.pid,
                    start_time: rec.start_time,
                    poll: Duration::from_millis(50),
                };
                p.terminate(self.cfg.replace_grace).await;
            } else {
                tracing::info!(owner = %key, pid = rec.pid, "cleaning a stale native record");
                restarts = rec.restarts;
            }
            self.store.delete(&key)?;
        }

        // A crash between a spawn and its record leaves a process nobody knows: end it first, so
        // that exactly one process runs per owner.
        sweep_orphans(&self.cfg, &key).await;
        let (proc, rec) = spawn(&self.cfg, spec, restarts)?;
        self.store.save(&rec)?;
        Ok(self.start_supervisor(spec, proc, rec, restarts))
    }

    fn start_supervisor(
        &self,
        spec: &WorkloadSpec,
        proc: Proc,
        rec: NativeRecord,
        restarts: u32,
    ) -> WorkloadStatus {
        let key = spec.owner.key();
        let initial = WorkloadStatus {
            owner: key.clone(),
            runtime: RuntimeKind::Native,
            state: WorkloadState::Starting,
            spec_hash: rec.spec_hash.clone(),
            container_id: None,
            pid: Some(proc.pid()),
            endpoint: spec.endpoint(),
            restarts,
            last_exit_code: None,
            healthy: None,
            limits_applied: Some(rec.limits_applied.clone()),
            message: None,
        };
        let (status_tx, status_rx) = watch::channel(initial.clone());
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let span = tracing::info_span!("native", owner = %key);
        let task = tokio::spawn(
            supervise(
                self.cfg.clone(),
                self.store.clone(),
                spec.clone(),
                proc,
                rec,
                StatusTx {
                    tx: status_tx,
                    events: self.events.clone(),
                },
                cmd_rx,
            )
            .instrument(span),
        );
        self.sups().insert(
            key,
            Supervisor {
                spec_hash: spec.spec_hash(),
                status: status_rx,
                cmd: cmd_tx,
                task,
            },
        );
        initial
    }

    fn status_from_record(rec: &NativeRecord) -> WorkloadStatus {
        let alive = same_process_alive(rec.pid, rec.start_time);
        WorkloadStatus {
            owner: rec.owner.clone(),
            runtime: RuntimeKind::Native,
            state: if alive {
                WorkloadState::Running
            } else {
                WorkloadState::Missing
            },
            spec_hash: rec.spec_hash.clone(),
            container_id: None,
            pid: Some(rec.pid),
            endpoint: rec.spec.endpoint(),
            restarts: rec.restarts,
            last_exit_code: None,
            healthy: None,
            limits_applied: Some(rec.limits_applied.clone()),
            message: Some(if alive {
                "running but not supervised by this program; ensure adopts it".into()
            } else {
                "the recorded process is gone".into()
            }),
        }
    }

    async fn stop_inner(
        &self,
        key: &OwnerKey,
        grace: Duration,
        forget: bool,
    ) -> Result<(), RuntimeError> {
        let _g = self.lock(key).await;
        let sup = self.sups().remove(key);
        if let Some(sup) = sup {
            let status = sup.status.clone();
            Self::stop_supervisor(sup, grace).await;
            if !forget {
                // Keep a finished supervisor so that inspect reports Stopped.
                let (cmd, _) = mpsc::channel(1);
                let spec_hash = status.borrow().spec_hash.clone();
                self.sups().insert(
                    key.clone(),
                    Supervisor {
                        spec_hash,
                        status,
                        cmd,
                        task: tokio::spawn(async {}),
                    },
                );
            }
        } else if let Some(rec) = self.store.load(key)?
            && same_process_alive(rec.pid, rec.start_time)
        {
            let mut p = Proc::Adopted {
                pid: rec.pid,
                start_time: rec.start_time,
                poll: Duration::from_millis(50),
            };
            p.terminate(grace).await;
            if let Some(cg) = &rec.cgroup {
                limits::kill_cgroup(cg);
            }
        }
        self.store.delete(key)?;
        if forget {
            // A process spawned just before a crash, whose record was never written, goes too.
            sweep_orphans(&self.cfg, key).await;
            if let Some(dir) = limits::cgroup_dir(&cgroup_name(&self.cfg, key)) {
                let _ = tokio::task::spawn_blocking(move || limits::remove_cgroup(&dir)).await;
            }
            let log = self.log_path(key);
            for p in [super::logwriter::rotated_path(&log), log] {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "cannot remove a log file")
                    }
                }
            }
        }
        Ok(())
    }
}

fn find_program(argv0: &str, env: &BTreeMap<String, String>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if argv0.contains('/') {
        let p = PathBuf::from(argv0);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err("it is not an executable file".into())
        } else {
            Err("no such file".into())
        };
    }
    let path = env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(argv0))
        .find(|p| executable(p))
        .ok_or_else(|| format!("not found in PATH ({path})"))
}

/// Marks every process the native runtime spawns with its owner, so a process whose record was never
/// written (the program died between spawn and save) can still be found.
pub const ENV_OWNER: &str = "LAS_WORKLOAD_OWNER";
/// Marks the stack (its logs directory, unique per `LAS_HOME`) a process belongs to.
pub const ENV_STACK: &str = "LAS_WORKLOAD_STACK";

/// Pids of live processes marked with `owner` of this stack.
pub fn marked_processes(cfg: &NativeConfig, owner: &OwnerKey) -> Vec<u32> {
    let want_owner = format!("{ENV_OWNER}={}", owner.as_str());
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
            let mut vars = env.split(|b| *b == 0);
            let (mut o, mut s) = (false, false);
            for v in &mut vars {
                o |= v == want_owner.as_bytes();
                s |= v == want_stack.as_bytes();
            }
            o && s && proc_stat(*pid).is_some_and(|(_, _, state)| state != 'Z')
        })
        .collect()
}

/// Kills (SIGKILL, whole process group) every unrecorded process of `owner`.
async fn sweep_orphans(cfg: &NativeConfig, owner: &OwnerKey) {
    for pid in marked_processes(cfg, owner) {
        tracing::warn!(owner = %owner, pid, "killing an unrecorded process of this owner (left by a crash)");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Spawns the program of `spec` (a fresh process) and builds its record.
fn spawn(
    cfg: &NativeConfig,
    spec: &WorkloadSpec,
    restarts: u32,
) -> Result<(Proc, NativeRecord), RuntimeError> {
    let key = spec.owner.key();
    let Program::Native { argv } = &spec.program else {
        return Err(RuntimeError::InvalidSpec {
            owner: key,
            reason: "the native runtime runs native programs only (got a container)".into(),
        });
    };
    let Some((argv0, args)) = argv.split_first() else {
        return Err(RuntimeError::InvalidSpec {
            owner: key,
            reason: "argv is empty".into(),
        });
    };
    let program =
        find_program(argv0, &spec.env).map_err(|reason| RuntimeError::ProgramNotFound {
            owner: key.clone(),
            program: argv0.clone(),
            reason,
        })?;
    if let Some(wd) = &spec.working_dir
        && !wd.is_dir()
    {
        return Err(RuntimeError::InvalidSpec {
            owner: key,
            reason: format!("working directory {} does not exist", wd.display()),
        });
    }
    std::fs::create_dir_all(&cfg.logs_dir)
        .map_err(|e| RuntimeError::io(format!("create {}", cfg.logs_dir.display()), e))?;
    let log_path = cfg.logs_dir.join(format!("{}.log", key.slug()));
    let (out, err, log_writer) = log_pipe(cfg, &log_path)?;

    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg0(argv0)
        .args(args)
        .envs(&spec.env)
        .env(ENV_OWNER, key.as_str())
        .env(ENV_STACK, &cfg.logs_dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(wd) = &spec.working_dir {
        cmd.current_dir(wd);
    }
    let mut applied = Applied::default();
    match limits::prepare_cgroup(&cgroup_name(cfg, &key), &spec.limits) {
        Ok((dir, limited)) => {
            limits::join_in_child(&mut cmd, &dir);
            applied.cgroup = Some(dir);
            applied.cgroup_limits = limited;
        }
        Err(why) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(reason = %why, "no cgroup for native workloads: a process that leaves its process group (setsid) survives the removal of its Module");
            });
        }
    }
    if !applied.cgroup_limits {
        applied.rlimit_as = limits::apply_rlimits(&mut cmd, &spec.limits);
        applied.cpus_ignored = spec.limits.cpus.is_some();
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            RuntimeError::ProgramNotFound {
                owner: key.clone(),
                program: argv0.clone(),
                reason: e.to_string(),
            }
        }
        _ => RuntimeError::Spawn {
            owner: key.clone(),
            reason: e.to_string(),
        },
    })?;
    let pid = child.id().ok_or_else(|| RuntimeError::Spawn {
        owner: key.clone(),
        reason: "the process exited before its pid was read".into(),
    })?;
    // Again from here: harmless when the child already moved itself, and says so when it failed.
    if let Some(dir) = &applied.cgroup
        && let Err(e) = limits::join_cgroup(dir, pid)
        && proc_stat(pid).is_some()
    {
        tracing::warn!(error = %e, "cannot move the process into its cgroup; it is not tracked");
        applied.cgroup = None;
        applied.cgroup_limits = false;
    }
    // The start time identifies the process across pid reuse; a process that already exited
    // has none, which the supervisor notices at once.
    let start_time = proc_stat(pid).map(|s| s.0).unwrap_or(0);
    let rec = NativeRecord {
        owner: key,
        pid,
        start_time,
        spec_hash: spec.spec_hash(),
        spec: spec.clone(),
        log_path,
        limits_applied: applied.describe(),
        restarts,
        cgroup: applied.cgroup,
    };
    Ok((
        Proc::Child {
            child,
            pid,
            log_writer,
        },
        rec,
    ))
}

/// The name of an owner's cgroup: unique per stack (its logs directory), so two stacks on one
/// machine never share one.
fn cgroup_name(cfg: &NativeConfig, key: &OwnerKey) -> String {
    use sha2::Digest;
    let stack = sha2::Sha256::digest(cfg.logs_dir.as_os_str().as_encoded_bytes());
    format!("{}-{}", &hex::encode(stack)[..10], key.slug())
}

/// The child's stdout and stderr: the write end of a pipe read by a `lasctl log-writer` process
/// (spawned here, in its own process group, so it outlives this program like the workload does),
/// or the log file itself when there is no log writer.
fn log_pipe(
    cfg: &NativeConfig,
    log_path: &Path,
) -> Result<
    (
        std::process::Stdio,
        std::process::Stdio,
        Option<Box<tokio::process::Child>>,
    ),
    RuntimeError,
> {
    let open_err = |e| RuntimeError::io(format!("open {}", log_path.display()), e);
    let Some(exe) = &cfg.log_writer else {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(open_err)?;
        let err = out.try_clone().map_err(open_err)?;
        return Ok((out.into(), err.into(), None));
    };
    let (r, w) = std::io::pipe().map_err(|e| RuntimeError::io("create a pipe", e))?;
    let writer = tokio::process::Command::new(exe)
        .arg("log-writer")
        .arg("--max-bytes")
        .arg(cfg.log_max_bytes.to_string())
        .arg(log_path)
        // Nothing of the daemon's environment: it is not a workload (and is not found as one).
        .env_clear()
        .stdin(r)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| RuntimeError::io(format!("start the log writer {}", exe.display()), e))?;
    let w2 = w.try_clone().map_err(open_err)?;
    Ok((w.into(), w2.into(), Some(Box::new(writer))))
}

/// Without a log writer the child holds the log file itself: a rename would not stop it from
/// growing, so an oversized file is truncated in place (never copied; the output is lost).
fn truncate_if_big(path: &Path, max: u64) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() > max
        && let Ok(f) = std::fs::OpenOptions::new().write(true).open(path)
    {
        let _ = f.set_len(0);
    }
}

/// The backoff before restart number `n` (0-based) of a run of failures: `initial * 2^n` capped at
/// `max`, plus up to 25% jitter (still capped).
pub fn backoff_delay(initial: Duration, max: Duration, n: u32) -> Duration {
    let base = initial.saturating_mul(1u32 << n.min(20)).min(max);
    base.mul_f64(1.0 + 0.25 * jitter_unit()).min(max)
}

/// A supervisor's status channel: every change of state, pid or restart count is also announced
/// on the runtime's event channel.
struct StatusTx {
    tx: watch::Sender<WorkloadStatus>,
    events: broadcast::Sender<WorkloadEvent>,
}

impl StatusTx {
    fn send_modify(&self, f: impl FnOnce(&mut WorkloadStatus)) {
        let mut announce = None;
        self.tx.send_modify(|s| {
            let before = (s.state, s.pid, s.restarts);
            f(s);
            if before != (s.state, s.pid, s.restarts) {
                announce = Some(WorkloadEvent {
                    owner: s.owner.clone(),
                    runtime: RuntimeKind::Native,
                    state: s.state,
                });
            }
        });
        if let Some(e) = announce {
            // No subscriber is not an error.
            let _ = self.events.send(e);
        }
    }
}

async fn supervise(
    cfg: NativeConfig,
    store: Arc<dyn NativeStore>,
    spec: WorkloadSpec,
    mut proc: Proc,
    mut rec: NativeRecord,
    status: StatusTx,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let key = spec.owner.key();
    let mut failures: u32 = 0;
    let mut restarts = rec.restarts;
    loop {
        let started = Instant::now();
        let (dead_tx, mut dead_rx) = mpsc::channel::<()>(1);
        let mut monitor = spec.probe.as_ref().map(|p| {
            let action = p.action.clone();
            let host = if spec.bind_address.is_unspecified() {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                spec.bind_address
            };
            let timeout = p.timeout;
            let run: ProbeFn = Arc::new(move || {
                let action = action.clone();
                async move { probe_once(&action, host, timeout).await }.boxed()
            });
            HealthMonitor::spawn(
                p,
                run,
                Some(Arc::new(move || {
                    let _ = dead_tx.try_send(());
                })),
            )
        });
        status.send_modify(|s| {
            s.pid = Some(proc.pid());
            s.restarts = restarts;
            s.state = if monitor.is_some() {
                WorkloadState::Running
            } else {
                WorkloadState::Ready
            };
            s.healthy = None;
            s.message = None;
        });
        let mut rotate = tokio::time::interval(cfg.rotate_check);
        let mut liveness_kill = false;
        let code = loop {
            tokio::select! {
                code = proc.wait() => break code,
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Stop { grace, done }) => {
                        drop(monitor.take());
                        let code = proc.terminate(grace).await;
                        // Stopped: nothing of it may run on, and an empty cgroup is not kept
                        // (the next start makes it again).
                        if let Some(cg) = rec.cgroup.clone() {
                            let _ = tokio::task::spawn_blocking(move || limits::remove_cgroup(&cg)).await;
                        }
                        proc.reap_log_writer(Duration::from_secs(2)).await;
                        let _ = store.delete(&key);
                        status.send_modify(|s| {
                            s.state = WorkloadState::Stopped;
                            s.last_exit_code = code.or(s.last_exit_code);
                            s.healthy = None;
                            s.message = Some("stopped on request".into());
                        });
                        let _ = done.send(());
                        return;
                    }
                    // The runtime was dropped: leave the process running for the next program.
                    None => return,
                },
                changed = async {
                    match monitor.as_mut() {
                        Some(m) => m.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed && let Some(m) = &monitor {
                        let r = m.report();
                        status.send_modify(|s| {
                            s.healthy = r.healthy();
                            s.state = if r.ready {
                                WorkloadState::Ready
                            } else if r.ever_ready {
                                WorkloadState::Unhealthy
                            } else {
                                WorkloadState::Running
                            };
                            s.message = r.last_error.clone();
                        });
                    }
                }
                Some(()) = dead_rx.recv() => {
                    tracing::warn!("liveness probe failed repeatedly; restarting");
                    liveness_kill = true;
                    break proc.terminate(cfg.replace_grace).await;
                }
                _ = rotate.tick(), if cfg.log_writer.is_none() => truncate_if_big(&rec.log_path, cfg.log_max_bytes),
            }
        };
        drop(monitor);
        // What the process left behind (daemonized children included) ends with it.
        if let Some(cg) = &rec.cgroup {
            limits::kill_cgroup(cg);
        }
        // Its last output reaches the log before the exit is reported (bounded: a descendant
        // outside any cgroup may hold the pipe open).
        proc.reap_log_writer(Duration::from_millis(500)).await;
        let ran = started.elapsed();
        tracing::info!(exit_code = ?code, ran_ms = ran.as_millis() as u64, "native process exited");
        let _ = store.delete(&key);
        let succeeded = code == Some(0) && !liveness_kill;
        let restart = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !succeeded,
            RestartPolicy::Never => false,
        };
        if !restart {
            status.send_modify(|s| {
                s.state = WorkloadState::Exited;
                s.last_exit_code = code;
                s.healthy = None;
                s.message = Some(format!(
                    "exited ({}); restart policy {:?}",
                    fmt_code(code),
                    spec.restart
                ));
            });
            // Stay to answer Stop; exit then, or when the runtime goes.
            if let Some(Cmd::Stop { done, .. }) = cmds.recv().await {
                let _ = done.send(());
            }
            return;
        }
        if ran >= cfg.healthy_reset {
            failures = 0;
        }
        let delay = backoff_delay(cfg.backoff_initial, cfg.backoff_max, failures);
        failures = failures.saturating_add(1);
        status.send_modify(|s| {
            s.state = WorkloadState::CrashLoop;
            s.last_exit_code = code;
            s.healthy = None;
            s.message = Some(format!(
                "exited ({}) after {:.1}s; restarting in {:.1}s (failure {failures} in a row)",
                fmt_code(code),
                ran.as_secs_f64(),
                delay.as_secs_f64()
            ));
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = cmds.recv() => {
                if let Some(Cmd::Stop { done, .. }) = cmd {
                    status.send_modify(|s| {
                        s.state = WorkloadState::Stopped;
                        s.message = Some("stopped on request".into());
                    });
                    let _ = done.send(());
                }
                return;
            }
        }
        restarts = restarts.saturating_add(1);
        match spawn(&cfg, &spec, restarts) {
            Ok((p, r)) => {
                if let Err(e) = store.save(&r) {
                    tracing::warn!(error = %e, "cannot record the restarted process");
                }
                proc = p;
                rec = r;
            }
            Err(e) => {
                tracing::warn!(error = %e, "restart failed");
                status.send_modify(|s| {
                    s.state = WorkloadState::CrashLoop;
                    s.message = Some(e.to_string());
                });
                // Count the failed spawn as an exit and back off again.
                proc = Proc::Adopted {
                    pid: 0,
                    start_time: 0,
                    poll: Duration::from_millis(1),
                };
            }
        }
    }
}

fn fmt_code(code: Option<i64>) -> String {
    code.map(|c| format!("code {c}"))
        .unwrap_or_else(|| "code unknown".into())
}

impl Runtime for NativeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Native
    }

    fn ensure<'a>(
        &'a self,
        spec: &'a WorkloadSpec,
    ) -> BoxFuture<'a, Result<WorkloadStatus, RuntimeError>> {
        let span = tracing::info_span!("ensure", owner = %spec.owner.key(), runtime = "native");
        self.ensure_inner(spec).instrument(span).boxed()
    }

    fn inspect<'a>(
        &'a self,
        owner: &'a OwnerKey,
    ) -> BoxFuture<'a, Result<Option<WorkloadStatus>, RuntimeError>> {
        async move {
            if let Some(s) = self.sups().get(owner) {
                return Ok(Some(s.status.borrow().clone()));
            }
            Ok(self
                .store
                .load(owner)?
                .map(|r| Self::status_from_record(&r)))
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.stop_inner(owner, grace, false).boxed()
    }

    fn remove<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.stop_inner(owner, grace, true).boxed()
    }

    fn logs<'a>(
        &'a self,
        owner: &'a OwnerKey,
        opts: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>> {
        async move {
            let path = self.log_path(owner);
            if !path.exists() {
                return Err(RuntimeError::NotFound {
                    owner: owner.clone(),
                    runtime: "native",
                });
            }
            file_log_stream(path, opts)
        }
        .boxed()
    }

    fn events(&self) -> EventStream {
        super::broadcast_stream(&self.events)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<WorkloadStatus>, RuntimeError>> {
        async move {
            let mut out: BTreeMap<OwnerKey, WorkloadStatus> = self
                .sups()
                .iter()
                .map(|(k, s)| (k.clone(), s.status.borrow().clone()))
                .collect();
            for rec in self.store.all()? {
                out.entry(rec.owner.clone())
                    .or_insert_with(|| Self::status_from_record(&rec));
            }
            Ok(out.into_values().collect())
        }
        .boxed()
    }

    fn usage<'a>(&'a self, status: &'a WorkloadStatus) -> BoxFuture<'a, super::usage::Usage> {
        let pid = status.pid;
        async move {
            match pid {
                Some(pid) => tokio::task::spawn_blocking(move || super::usage::native(pid))
                    .await
                    .unwrap_or_default(),
                None => Default::default(),
            }
        }
        .boxed()
    }
}

/// Reads a log file: the last `tail` lines, then (with `follow`) what is appended, surviving a
/// copy-truncate rotation.
fn file_log_stream(path: PathBuf, opts: LogOptions) -> Result<LogStream, RuntimeError> {
    let mut f = std::fs::File::open(&path)
        .map_err(|e| RuntimeError::io(format!("open {}", path.display()), e))?;
    let mut all = Vec::new();
    f.read_to_end(&mut all)
        .map_err(|e| RuntimeError::io(format!("read {}", path.display()), e))?;
    let pos = all.len() as u64;
    let start = match opts.tail {
        None => 0,
        Some(n) => {
            // Skip a trailing newline, then find the start of the last n lines.
            let body = all.strip_suffix(b"\n").unwrap_or(&all);
            let mut idx = body.len();
            let mut seen = 0;
            while idx > 0 && seen < n {
                idx -= 1;
                if body[idx] == b'\n' {
                    seen += 1;
                    if seen == n {
                        idx += 1;
                        break;
                    }
                }
            }
            if n == 0 { all.len() } else { idx }
        }
    };
    let first = Bytes::from(all.split_off(start));
    let head = futures_util::stream::iter((!first.is_empty()).then_some(Ok(first)));
    if !opts.follow {
        return Ok(head.boxed());
    }
    let follow = futures_util::stream::unfold((path, pos), |(path, mut pos)| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0; // rotated
            }
            if len == pos {
                continue;
            }
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(pos)).is_err() || f.read_to_end(&mut buf).is_err() {
                continue;
            }
            pos += buf.len() as u64;
            return Some((Ok(Bytes::from(buf)), (path, pos)));
        }
    });
    Ok(head.chain(follow).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        for n in 0..12 {
            let d = backoff_delay(i, m, n);
            let base = i.saturating_mul(1 << n).min(m);
            assert!(d >= base && d <= base.mul_f64(1.25).min(m), "n={n} d={d:?}");
        }
        assert_eq!(backoff_delay(i, m, 30), m);
    }

    #[test]
    fn proc_stat_reads_our_own_process() {
        let (st, _pgrp, state) = proc_stat(std::process::id()).unwrap();
        assert!(st > 0);
        assert!(state == 'R' || state == 'S');
        assert!(same_process_alive(std::process::id(), st));
        assert!(!same_process_alive(std::process::id(), st + 1));
    }

    #[test]
    fn without_a_log_writer_an_oversized_log_is_truncated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("module-x.log");
        std::fs::write(&log, "a\n".repeat(100)).unwrap();
        truncate_if_big(&log, 1000);
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            200,
            "below the cap: untouched"
        );
        truncate_if_big(&log, 100);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert!(
            !dir.path().join("module-x.log.1").exists(),
            "nothing copied"
        );
    }

    #[tokio::test]
    async fn log_stream_tails_and_follows_across_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("module-y.log");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        let tail: Vec<Bytes> = file_log_stream(
            log.clone(),
            LogOptions {
                tail: Some(2),
                follow: false,
            },
        )
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
        .await;
        assert_eq!(tail.concat(), b"two\nthree\n");
        let mut follow = file_log_stream(
            log.clone(),
            LogOptions {
                tail: Some(0),
                follow: true,
            },
        )
        .unwrap();
        // What the log writer does: rename, then a new file.
        std::fs::rename(&log, crate::runtime::logwriter::rotated_path(&log)).unwrap();
        let mut f = std::fs::File::create(&log).unwrap();
        f.write_all(b"four\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&next[..], b"four\n");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let e = find_program("definitely-not-a-program-xyz", &BTreeMap::new()).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        assert!(find_program("sh", &BTreeMap::new()).is_ok());
    }
}
