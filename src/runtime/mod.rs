//! The runtime layer: executes workloads (containers, native processes, the engine); decides nothing.
//!
//! Controllers hand a [`WorkloadSpec`] to a [`Runtime`] (`docker::DockerRuntime` or
//! `native::NativeRuntime`) and read back a [`WorkloadStatus`]: what really runs. Every workload
//! carries its owner (`kind/name` and uid) and the hash of its spec, so that a restarted program
//! finds what it started before, adopts what still matches and replaces what does not.

pub mod docker;
pub mod docker_lazy;
pub mod engine;
pub mod health;
pub mod limits;
pub mod logwriter;
pub mod native;
pub mod plugin_exec;
pub mod usage;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::module::{
    GpuRequest, HealthSpec, ModuleSpec, PortMapping, Protocol, RestartPolicy, RuntimeKind,
    VolumeMount,
};
use crate::api::{Kind, ObjectName};

/// Label keys put on every container (and every native record) this stack owns.
pub const LABEL_OWNER: &str = "localaistack.io/owner";
pub const LABEL_SPEC_HASH: &str = "localaistack.io/spec-hash";
pub const LABEL_UID: &str = "localaistack.io/uid";

/// Who a workload belongs to: the object (kind/name), its uid, and the slot.
///
/// An object normally runs in slot 0. While a changed Module is replaced without downtime, the
/// new workload starts in the other slot (0 or 1) next to the old one; each slot is its own owner
/// key for the runtime, so "at most one workload per owner key" still holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub kind: Kind,
    pub name: ObjectName,
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slot: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

impl Owner {
    pub fn new(kind: Kind, name: ObjectName, uid: impl Into<String>) -> Self {
        Self {
            kind,
            name,
            uid: uid.into(),
            slot: 0,
        }
    }

    /// The same owner in another slot.
    pub fn in_slot(mut self, slot: u8) -> Self {
        self.slot = slot;
        self
    }

    /// `<kind>/<name>` (slot 0) or `<kind>/<name>@<slot>`: the value of the
    /// `localaistack.io/owner` label and the key of everything the runtime keeps about a workload.
    pub fn key(&self) -> OwnerKey {
        OwnerKey::of(self.kind, self.name.as_str(), self.slot)
    }
}

/// `<kind>/<name>[@<slot>]`: identifies a workload across restarts of the program.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnerKey(pub String);

impl OwnerKey {
    pub fn of(kind: Kind, name: &str, slot: u8) -> Self {
        OwnerKey(match slot {
            0 => format!("{kind}/{name}"),
            s => format!("{kind}/{name}@{s}"),
        })
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The object this workload belongs to: kind and name (without the slot).
    pub fn object(&self) -> Option<(Kind, &str)> {
        let (kind, rest) = self.0.split_once('/')?;
        let name = rest.split_once('@').map_or(rest, |(n, _)| n);
        Some((Kind::parse_loose(kind)?, name))
    }
    /// A name safe for files and container names: `module-foo` for `Module/foo`, `module-foo_1`
    /// for its slot 1 (`_` never occurs in object names, so slots never collide with names).
    pub fn slug(&self) -> String {
        self.0
            .chars()
            .map(|c| match c {
                c if c.is_ascii_alphanumeric() || c == '-' => c.to_ascii_lowercase(),
                '@' => '_',
                _ => '-',
            })
            .collect()
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Program {
    /// A container: `command` replaces the image's entrypoint, `args` its cmd (empty: keep).
    Container {
        image: String,
        command: Vec<String>,
        args: Vec<String>,
    },
    /// A native process: `argv[0]` is the program (a path, or a name looked up in `PATH`).
    Native { argv: Vec<String> },
}

/// A port of a workload. For containers, `container_port` inside is published on `host_port`.
/// For native processes only `host_port` matters (the port the process listens on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
}

/// Resource limits. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub gpus: Option<GpuRequest>,
}

/// How the runtime probes a workload. Ports are as seen from the host (container ports are
/// translated through the port mappings by `Probe::from_health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
    /// Runs inside the container for containers, on the host for native processes; exit 0 passes.
    Exec {
        argv: Vec<String>,
    },
}

/// A health probe with its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub action: ProbeAction,
    pub period: Duration,
    pub timeout: Duration,
    /// Consecutive failures of a workload that was live before it is restarted (liveness).
    pub failure_threshold: u32,
}

impl Probe {
    /// The contract's `health:` with its defaults (period 2 s, timeout 2 s, threshold 3). A probe
    /// port that equals a container port of `ports` is translated to its host port.
    pub fn from_health(h: &HealthSpec, ports: &[Port]) -> Option<Probe> {
        let host = |p: u16| {
            ports
                .iter()
                .find(|m| m.container_port == p && m.protocol == Protocol::Tcp)
                .map(|m| m.host_port)
                .unwrap_or(p)
        };
        let action = if let Some(http) = &h.http {
            ProbeAction::Http {
                port: host(http.port),
                path: http.path.clone(),
            }
        } else if let Some(tcp) = &h.tcp {
            ProbeAction::Tcp {
                port: host(tcp.port),
            }
        } else {
            ProbeAction::Exec {
                argv: h.exec.clone()?,
            }
        };
        Some(Probe {
            action,
            period: Duration::from_secs(u64::from(h.period_seconds.unwrap_or(2).max(1))),
            timeout: Duration::from_secs(u64::from(h.timeout_seconds.unwrap_or(2).max(1))),
            failure_threshold: h.failure_threshold.unwrap_or(3).max(1),
        })
    }
}

/// One workload model for containers and native processes.
///
/// # Guarantees
/// - [`WorkloadSpec::spec_hash`] is stable across runs and builds: it hashes a canonical JSON of
///   everything but the owner's uid, so any change of what runs (image, argv, env, ports, mounts,
///   limits, restart policy, probe, bind address) changes it and makes `ensure` replace the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub owner: Owner,
    pub program: Program,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub ports: Vec<Port>,
    /// The host address ports are published on: 127.0.0.1 unless a policy allows more.
    pub bind_address: IpAddr,
    pub volumes: Vec<VolumeMount>,
    pub limits: Limits,
    pub restart: RestartPolicy,
    pub probe: Option<Probe>,
}

/// Errors of turning a Module into a workload.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error(
        "module {owner} uses `{field}`: resolve it to a container or native workload before handing it to the runtime"
    )]
    NotRunnable {
        owner: OwnerKey,
        field: &'static str,
    },
    #[error("module {owner} has no container or native workload")]
    Empty { owner: OwnerKey },
}

impl WorkloadSpec {
    /// A native workload running `argv` with defaults for everything else.
    pub fn native(owner: Owner, argv: Vec<String>) -> Self {
        Self::with_program(owner, Program::Native { argv })
    }

    /// A container workload running `image` with defaults for everything else.
    pub fn container(owner: Owner, image: impl Into<String>) -> Self {
        Self::with_program(
            owner,
            Program::Container {
                image: image.into(),
                command: Vec::new(),
                args: Vec::new(),
            },
        )
    }

    fn with_program(owner: Owner, program: Program) -> Self {
        Self {
            owner,
            program,
            env: BTreeMap::new(),
            working_dir: None,
            ports: Vec::new(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            volumes: Vec::new(),
            limits: Limits::default(),
            restart: RestartPolicy::Always,
            probe: None,
        }
    }

    /// Converts a Module's `container:` or `native:` spec. `from:` and `engine:` modules must be
    /// resolved by the control layer first (into a container, or the `lasctl engine llama` argv).
    ///
    /// # Caveats
    /// A port mapping without `hostPort` publishes on the same port number as the container's.
    pub fn from_module(owner: Owner, m: &ModuleSpec) -> Result<Self, SpecError> {
        let mut w = if let Some(c) = &m.container {
            let mut w = Self::with_program(
                owner,
                Program::Container {
                    image: c.image.clone(),
                    command: c.command.clone(),
                    args: c.args.clone(),
                },
            );
            w.env = c.env.clone();
            w.ports = c.ports.iter().map(port_of).collect();
            w.volumes = c.volumes.clone();
            if let Some(r) = &c.resources {
                w.limits = Limits {
                    cpus: r.cpus,
                    memory_bytes: r.memory_bytes,
                    gpus: r.gpus.clone(),
                };
            }
            w
        } else if let Some(n) = &m.native {
            let mut w = Self::native(owner, n.command.clone());
            w.env = n.env.clone();
            w.working_dir = n.working_dir.clone();
            w
        } else {
            let key = owner.key();
            return Err(if m.from.is_some() {
                SpecError::NotRunnable {
                    owner: key,
                    field: "from",
                }
            } else if m.engine.is_some() {
                SpecError::NotRunnable {
                    owner: key,
                    field: "engine",
                }
            } else {
                SpecError::Empty { owner: key }
            });
        };
        w.restart = m.restart_policy;
        w.probe = m
            .health
            .as_ref()
            .and_then(|h| Probe::from_health(h, &w.ports));
        if let (Program::Native { .. }, Some(p)) = (&w.program, &w.probe)
            && let ProbeAction::Http { port, .. } | ProbeAction::Tcp { port } = p.action
        {
            w.ports = vec![Port {
                container_port: port,
                host_port: port,
                protocol: Protocol::Tcp,
            }];
        }
        Ok(w)
    }

    pub fn kind(&self) -> RuntimeKind {
        match self.program {
            Program::Container { .. } => RuntimeKind::Container,
            Program::Native { .. } => RuntimeKind::Native,
        }
    }

    /// 32 hex characters of sha256 over the canonical JSON of the spec without the owner's uid
    /// and slot: the same spec hashes the same in either slot.
    pub fn spec_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(o) = v.get_mut("owner").and_then(|o| o.as_object_mut()) {
            o.remove("uid");
            o.remove("slot");
        }
        // serde_json's Map is a BTreeMap (no preserve_order feature): keys are sorted.
        let text = v.to_string();
        let digest = Sha256::digest(text.as_bytes());
        hex::encode(&digest[..16])
    }

    /// The ownership labels of this workload.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_OWNER.to_string(), self.owner.key().0),
            (LABEL_SPEC_HASH.to_string(), self.spec_hash()),
            (LABEL_UID.to_string(), self.owner.uid.clone()),
        ])
    }

    /// `http://<bind>:<port>` of the first TCP port, if any.
    pub fn endpoint(&self) -> Option<String> {
        let p = self.ports.iter().find(|p| p.protocol == Protocol::Tcp)?;
        let host = if self.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.bind_address
        };
        Some(match host {
            IpAddr::V4(a) => format!("http://{a}:{}", p.host_port),
            IpAddr::V6(a) => format!("http://[{a}]:{}", p.host_port),
        })
    }
}

fn port_of(p: &PortMapping) -> Port {
    Port {
        container_port: p.container_port,
        host_port: p.host_port.unwrap_or(p.container_port),
        protocol: p.protocol,
    }
}

/// The lifecycle of a workload as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkloadState {
    /// Created or spawned; not yet known to be running.
    Starting,
    /// Running; its probe has not passed yet (or it has none and it just started).
    Running,
    /// Running and its readiness probe passed (or it has no probe): may take traffic.
    Ready,
    /// Running but its probe fails.
    Unhealthy,
    /// Exited and will not be restarted: its restart policy says it is finished (or, for a
    /// container, it was stopped behind the program's back).
    Exited,
    /// Exited and waiting for a restart with backoff (it failed repeatedly).
    CrashLoop,
    /// Stopped on request.
    Stopped,
    /// Known to the program but gone (e.g. a container removed behind its back).
    Missing,
}

impl WorkloadState {
    /// Whether the process or container is alive.
    pub fn is_running(self) -> bool {
        matches!(self, Self::Running | Self::Ready | Self::Unhealthy)
    }
    /// Whether it may take traffic.
    pub fn is_ready(self) -> bool {
        self == Self::Ready
    }
}

impl fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::Ready => "Ready",
            Self::Unhealthy => "Unhealthy",
            Self::Exited => "Exited",
            Self::CrashLoop => "CrashLoop",
            Self::Stopped => "Stopped",
            Self::Missing => "Missing",
        };
        f.write_str(s)
    }
}

/// What really runs for one owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    pub owner: OwnerKey,
    pub runtime: RuntimeKind,
    pub state: WorkloadState,
    pub spec_hash: String,
    pub container_id: Option<String>,
    pub pid: Option<u32>,
    pub endpoint: Option<String>,
    /// Restarts since the workload was created (by the runtime's own policy).
    pub restarts: u32,
    pub last_exit_code: Option<i64>,
    /// The probe's verdict: `None` before the first probe or without a probe.
    pub healthy: Option<bool>,
    /// How resource limits were applied, e.g. `cgroup-v2`, `rlimit(as=...)`, `docker`, `none`.
    pub limits_applied: Option<String>,
    /// A human explanation of the state (last probe error, crash-loop delay, ...).
    pub message: Option<String>,
}

/// Options of [`Runtime::logs`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (all when `None`).
    pub tail: Option<usize>,
    /// Keep streaming new output until the stream is dropped.
    pub follow: bool,
}

/// The output of a workload, in chunks of bytes.
pub type LogStream = BoxStream<'static, Result<Bytes, RuntimeError>>;

/// A change of a workload, reported by its runtime as it happens: it started, exited, was
/// restarted, stopped or removed, or its probe verdict flipped. Controllers use it as a trigger
/// and read the truth with [`Runtime::inspect`]; the event only says which owner to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEvent {
    pub owner: OwnerKey,
    pub runtime: RuntimeKind,
    /// The state the runtime saw (for containers changed behind the program's back, the engine's
    /// action mapped to the nearest state).
    pub state: WorkloadState,
}

/// Workload changes of one runtime, until the stream is dropped.
pub type EventStream = BoxStream<'static, WorkloadEvent>;

/// A stream of what is sent on `tx` from now on. A receiver that falls behind skips what it
/// missed (events are triggers; the controllers' resync covers a gap).
pub(crate) fn broadcast_stream<T: Clone + Send + 'static>(
    tx: &tokio::sync::broadcast::Sender<T>,
) -> BoxStream<'static, T> {
    use futures_util::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    futures_util::stream::unfold(tx.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "workload events lagged");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// Errors of the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach the Docker engine at {host}: {reason}; start Docker, set DOCKER_HOST, or check that you may use its socket"
    )]
    DockerUnavailable { host: String, reason: String },
    #[error("image {image} is not present locally and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "port {port} on {address} is already in use; free it or choose another host port: {reason}"
    )]
    PortConflict {
        address: IpAddr,
        port: u16,
        reason: String,
    },
    #[error("cannot start {owner}: program {program:?} not found or not executable: {reason}")]
    ProgramNotFound {
        owner: OwnerKey,
        program: String,
        reason: String,
    },
    #[error("cannot start {owner}: {reason}")]
    Spawn { owner: OwnerKey, reason: String },
    #[error("the workload spec of {owner} is invalid: {reason}")]
    InvalidSpec { owner: OwnerKey, reason: String },
    #[error("{owner} is not known to the {runtime} runtime")]
    NotFound {
        owner: OwnerKey,
        runtime: &'static str,
    },
    #[error("container name {name} is taken by a container this stack does not own; remove it")]
    NameTaken { name: String },
    #[error("docker: {context}: {source}")]
    Docker {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("native process records in {path}: {reason}")]
    Store { path: PathBuf, reason: String },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// The seam between controllers and what executes workloads.
///
/// # Guarantees
/// - Every operation is idempotent and keyed by [`Owner::key`]: `ensure` of an unchanged spec
///   returns what runs; of a changed spec (another [`WorkloadSpec::spec_hash`]) replaces it; after a
///   restart of the program it adopts what a previous run started (found by labels / records).
/// - At most one workload runs per owner.
/// - Calls for one owner are serialized inside the runtime; calls for different owners run
///   concurrently.
///
/// # Caveats
/// - `ensure` returns as soon as the workload is started; poll `inspect` for `Ready`.
/// - The runtime does not decide anything (no policy): what it is given is what it runs.
pub trait Runtime: Send + Sync {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Creates the workload, or adopts the one that runs with the same spec hash, or replaces one
    /// with another hash; starts it again if it was stopped on request (or, for a container, stopped
    /// or removed behind the program's back). A workload its restart policy finished (`Never`, or
    /// `OnFailure` after exit code 0) is left as it is and reported `Exited`.
    fn ensure<'a>(
        &'a self,
        spec: &'a WorkloadSpec,
    ) -> BoxFuture<'a, Result<WorkloadStatus, RuntimeError>>;

    /// What runs for `owner`, or `None` when nothing does and nothing is known.
    fn inspect<'a>(
        &'a self,
        owner: &'a OwnerKey,
    ) -> BoxFuture<'a, Result<Option<WorkloadStatus>, RuntimeError>>;

    /// Stops gracefully (SIGTERM / `docker stop`), kills after `grace`. Keeps the workload (and
    /// its logs) so that `inspect` reports it `Stopped`. Stopping what does not run is not an error.
    fn stop<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Stops (with `grace`) and forgets the workload: the container is removed, the native record
    /// deleted. Removing what does not exist is not an error.
    fn remove<'a>(
        &'a self,
        owner: &'a OwnerKey,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// The workload's output (stdout and stderr).
    fn logs<'a>(
        &'a self,
        owner: &'a OwnerKey,
        opts: LogOptions,
    ) -> BoxFuture<'a, Result<LogStream, RuntimeError>>;

    /// Everything this runtime knows this stack owns (running or not).
    fn list(&self) -> BoxFuture<'_, Result<Vec<WorkloadStatus>, RuntimeError>>;

    /// Changes of this stack's workloads from now on: exits, restarts and probe transitions seen
    /// by the runtime's own supervisors, and (for containers) what the engine reports, including
    /// changes made behind the program's back (`docker stop`, `docker rm -f`, `docker kill`).
    ///
    /// # Caveats
    /// Best effort: a slow reader skips events and a lost engine connection is re-established
    /// after a second; callers keep a periodic resync for what a stream misses.
    fn events(&self) -> EventStream;

    /// What the workload uses now (memory, GPU memory) and when it started, for `lasctl ps`.
    /// Unknown figures are `None`; the default knows none.
    fn usage<'a>(&'a self, status: &'a WorkloadStatus) -> BoxFuture<'a, usage::Usage> {
        let _ = status;
        Box::pin(async { usage::Usage::default() })
    }
}

/// A small, dependency-free jitter source: a number in `[0, 1)` from the clock and a counter.
pub(crate) fn jitter_unit() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::module::{ContainerSpec, HttpProbe, NativeSpec};

    fn owner(n: &str) -> Owner {
        Owner::new(Kind::Module, ObjectName::new(n).unwrap(), "uid-1")
    }

    #[test]
    fn spec_hash_is_stable_and_ignores_uid() {
        let m = ModuleSpec {
            native: Some(NativeSpec {
                command: vec!["/bin/sleep".into(), "5".into()],
                env: BTreeMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
                working_dir: None,
            }),
            ..Default::default()
        };
        let a = WorkloadSpec::from_module(owner("a"), &m).unwrap();
        let mut b = a.clone();
        b.owner.uid = "other".into();
        assert_eq!(a.spec_hash(), b.spec_hash());
        assert_eq!(a.spec_hash().len(), 32);
        b.env.insert("C".into(), "3".into());
        assert_ne!(a.spec_hash(), b.spec_hash());
    }

    #[test]
    fn container_conversion_translates_probe_port_and_binds_localhost() {
        let m = ModuleSpec {
            container: Some(ContainerSpec {
                image: "x:1".into(),
                ports: vec![PortMapping {
                    container_port: 80,
                    host_port: Some(8080),
                    protocol: Protocol::Tcp,
                }],
                ..Default::default()
            }),
            health: Some(HealthSpec {
                http: Some(HttpProbe {
                    path: "/".into(),
                    port: 80,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let w = WorkloadSpec::from_module(owner("web"), &m).unwrap();
        assert_eq!(w.bind_address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(w.endpoint().as_deref(), Some("http://127.0.0.1:8080"));
        let p = w.probe.clone().unwrap();
        assert_eq!(
            p.action,
            ProbeAction::Http {
                port: 8080,
                path: "/".into()
            }
        );
        assert_eq!(p.failure_threshold, 3);
        assert_eq!(w.labels()[LABEL_OWNER], "Module/web");
    }

    #[test]
    fn engine_modules_must_be_resolved_first() {
        let m = ModuleSpec {
            from: Some(ObjectName::new("open-webui").unwrap()),
            ..Default::default()
        };
        let e = WorkloadSpec::from_module(owner("w"), &m).unwrap_err();
        assert!(e.to_string().contains("resolve it"), "{e}");
    }

    #[test]
    fn slots_have_their_own_keys_and_slugs_but_one_hash() {
        let a = WorkloadSpec::native(owner("foo"), vec!["/bin/true".into()]);
        let mut b = a.clone();
        b.owner = b.owner.in_slot(1);
        assert_eq!(a.owner.key().as_str(), "Module/foo");
        assert_eq!(b.owner.key().as_str(), "Module/foo@1");
        assert_eq!(b.owner.key().slug(), "module-foo_1");
        // A module named foo-1 in slot 0 never shares files or container names with foo's slot 1.
        assert_ne!(owner("foo-1").key().slug(), b.owner.key().slug());
        assert_eq!(a.spec_hash(), b.spec_hash());
        assert_eq!(b.owner.key().object(), Some((Kind::Module, "foo")));
        assert_eq!(a.owner.key().object(), Some((Kind::Module, "foo")));
        assert_eq!(OwnerKey("junk".into()).object(), None);
    }

    #[test]
    fn jitter_is_in_unit_interval() {
        for _ in 0..1000 {
            let j = jitter_unit();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
