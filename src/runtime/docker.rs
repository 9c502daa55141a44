//! Containers through the Docker engine (bollard).
//!
//! Every container carries the ownership labels and is named `las-<kind>-<name>`, so one owner
//! can never have two containers and a restarted program finds its containers by label.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceRequest,
    HostConfig, PortBinding, RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tracing::Instrument;

use super::health::{HealthMonitor, ProbeFn, probe_once};
use super::{
    EventStream, LABEL_OWNER, LABEL_SPEC_HASH, LogOptions, LogStream, OwnerKey, ProbeAction,
    Program, Runtime, RuntimeError, WorkloadEvent, WorkloadSpec, WorkloadState, WorkloadStatus,
};
use crate::api::module::{GpuRequest, Protocol, RestartPolicy, RuntimeKind};

/// Tunables of the Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The longest an image pull may take before `ensure` fails.
    pub pull_timeout: Duration,
    /// How long connecting and pinging the engine may take.
    pub connect_timeout: Duration,
    /// The stack these containers belong to (the daemon uses its `LAS_HOME`): the value of the
    /// `localaistack.io/stack` label, so that two state directories on one engine never touch each
    /// other's containers.
    pub stack: String,
}

/// The label that separates stacks (state directories) sharing one Docker engine.
pub const LABEL_STACK: &str = "localaistack.io/stack";

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            pull_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            stack: "default".into(),
        }
    }
}

/// The container [`Runtime`].
///
/// # Guarantees
/// - At most one container per owner: `ensure` removes every other container labelled with the
///   owner, and the container name `las-<kind>-<name>` is unique in the engine.
/// - Host ports are published on the spec's `bind_address` (127.0.0.1 unless told otherwise); a
///   port already in use is refused before anything is created.
/// - A missing image is pulled within `pull_timeout`; otherwise `ensure` fails with
///   "image X is not present locally and could not be pulled: <reason>".
///
/// # Caveats
/// - Restart policies are delegated to the engine (`Always` → `unless-stopped`, `OnFailure` →
///   `on-failure`); the engine's own backoff applies and `restarting` is reported as `CrashLoop`.
/// - Health is probed by this program (HTTP/TCP on the host port, exec through `docker exec`)
///   for containers it ensured; a liveness failure restarts the container. A running container
///   that this program has not ensured yet (e.g. `inspect` right after a restart) has no probe
///   result and is reported `Ready` with `healthy: None`; `ensure` starts probing it.
/// - `ensure` of an exited container restarts it (drift), unless its restart policy says it is
///   finished (`Never`, or `OnFailure` with exit code 0) and it was not stopped on request.
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    cfg: DockerConfig,
    monitors: Mutex<HashMap<OwnerKey, (String, HealthMonitor)>>,
    /// Owners this program has seen running (to report drift as `Missing`).
    known: Mutex<HashSet<OwnerKey>>,
    /// Owners stopped on request (to report `Stopped` rather than `Exited`).
    stopped: Mutex<HashSet<OwnerKey>>,
    locks: Mutex<HashMap<OwnerKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Probe transitions of the monitors (the engine's own events are read in `events`).
    events: tokio::sync::broadcast::Sender<WorkloadEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST` (default `unix:///var/run/docker.sock`),
    /// negotiates the API version and pings it.
    ///
    /// # Errors
    /// [`RuntimeError::DockerUnavailable`] when no engine answers or its socket may not be used.
    pub async fn connect(cfg: DockerConfig) -> Result<Self, RuntimeError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let unavailable = |reason: String| RuntimeError::DockerUnavailable {
            host: host.clone(),
            reason,
        };
        let docker = Docker::connect_with_defaults().map_err(|e| unavailable(e.to_string()))?;
        let docker = tokio::time::timeout(cfg.connect_timeout, docker.negotiate_version())
            .await
            .map_err(|_| unavailable("no answer in time".into()))?
            .map_err(|e| unavailable(explain_connect(&e)))?;
        tokio::time::timeout(cfg.connect_timeout, docker.ping())
            .await
            .map_err(|_| unavailable("no answer in time".into()))?
            .map_err(|e| unavailable(explain_connect(&e)))?;
        Ok(Self {
            docker,
            host,
            cfg,
            monitors: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
            stopped: Mutex::new(HashSet::new()),
            locks: Mutex::new(HashMap::new()),
            events: tokio::sync::broadcast::channel(256).0,
        })
    }

    /// The bollard client (for tests and tools that prepare images).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The engine's version, e.g. `27.3.1` (for `lasctl status`).
    pub async fn engine_version(&self) -> Result<String, RuntimeError> {
        let v = tokio::time::timeout(self.cfg.connect_timeout, self.docker.version())
            .await
            .map_err(|_| RuntimeError::DockerUnavailable {
                host: self.host.clone(),
                reason: "no answer in time".into(),
            })?
            .map_err(Self::docker_err("ask the engine's version"))?;
        Ok(v.version.unwrap_or_else(|| "unknown".into()))
    }

    /// The engine address this runtime talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The container name of an owner in the default stack.
    pub fn container_name(owner: &OwnerKey) -> String {
        format!("las-{}", owner.slug())
    }

    /// The container name of an owner in this runtime's stack (unique per stack on the engine).
    pub fn name_for(&self, owner: &OwnerKey) -> String {
        if self.cfg.stack == "default" {
            return Self::container_name(owner);
        }
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(self.cfg.stack.as_bytes()));
        format!("las-{}-{}", owner.slug(), &h[..8])
    }

    fn stack_filter(&self) -> String {
        format!("{LABEL_STACK}={}", self.cfg.stack)
    }

    async fn lock_owner(&self, key: &OwnerKey) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.locks).entry(key.clone()).or_default().clone();
        m.lock_owned().await
    }

    fn docker_err(context: impl Into<String>) -> impl FnOnce(BollardError) -> RuntimeError {
        let context = context.into();
        move |source| RuntimeError::Docker { context, source }
    }

    /// Containers labelled with this owner (running or not).
    async fn owned(&self, key: &OwnerKey) -> Result<Vec<ContainerInspectResponse>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_OWNER}={}", key.as_str()),
                self.stack_filter(),
            ],
        )]);
        self.inspect_listed(filters).await
    }

    async fn inspect_listed(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<ContainerInspectResponse>, RuntimeError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(Self::docker_err("list containers"))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            match self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => out.push(i),
                // Removed between list and inspect.
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(Self::docker_err(format!("inspect {id}"))(e)),
            }
        }
        Ok(out)
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(Self::docker_err(format!("inspect image {image}"))(e)),
        }
        tracing::info!(image, "pulling image");
        let pull = self
            .docker
            .create_image(
                Some(CreateImageOptions {
                    from_image: Some(image.to_string()),
                    ..Default::default()
                }),
                None,
                None,
            )
            .try_for_each(|info| {
                if let Some(status) = info.status {
                    tracing::info!(image, %status, "pull");
                }
                futures_util::future::ready(Ok(()))
            });
        let unavailable = |reason: String| RuntimeError::ImageUnavailable {
            image: image.to_string(),
            reason,
        };
        match tokio::time::timeout(self.cfg.pull_timeout, pull).await {
            Err(_) => Err(unavailable(format!(
                "the pull did not finish within {}s",
                self.cfg.pull_timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(unavailable(server_message(&e))),
            Ok(Ok(())) => match self.docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(e) => Err(unavailable(server_message(&e))),
            },
        }
    }

    fn create_body(spec: &WorkloadSpec) -> Result<ContainerCreateBody, RuntimeError> {
        let key = spec.owner.key();
        let Program::Container {
            image,
            command,
            args,
        } = &spec.program
        else {
            return Err(RuntimeError::InvalidSpec {
                owner: key,
                reason: "the docker runtime runs containers only (got a native program)".into(),
            });
        };
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for p in &spec.ports {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let k = format!("{}/{proto}", p.container_port);
            exposed.push(k.clone());
            bindings.insert(
                k,
                Some(vec![PortBinding {
                    host_ip: Some(spec.bind_address.to_string()),
                    host_port: Some(p.host_port.to_string()),
                }]),
            );
        }
        let mut binds = Vec::new();
        for v in &spec.volumes {
            if !v.host_path.is_absolute() || !v.container_path.is_absolute() {
                return Err(RuntimeError::InvalidSpec {
                    owner: key,
                    reason: format!(
                        "volume {} -> {}: both paths must be absolute",
                        v.host_path.display(),
                        v.container_path.display()
                    ),
                });
            }
            binds.push(format!(
                "{}:{}{}",
                v.host_path.display(),
                v.container_path.display(),
                if v.read_only { ":ro" } else { "" }
            ));
        }
        let device_requests = spec.limits.gpus.as_ref().map(|g| {
            let (count, ids) = match g {
                GpuRequest::All => (Some(-1), None),
                GpuRequest::Count(n) => (Some(i64::from(*n)), None),
                GpuRequest::Devices(d) => (None, Some(d.clone())),
            };
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                count,
                device_ids: ids,
                capabilities: Some(vec![vec!["gpu".into()]]),
                options: None,
            }]
        });
        let restart = match spec.restart {
            RestartPolicy::Always => RestartPolicyNameEnum::UNLESS_STOPPED,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
            RestartPolicy::Never => RestartPolicyNameEnum::NO,
        };
        let labels = spec.labels().into_iter().collect();
        Ok(ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: (!command.is_empty()).then(|| command.clone()),
            cmd: (!args.is_empty()).then(|| args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.as_ref().map(|w| w.display().to_string()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds: Some(binds),
                memory: spec.limits.memory_bytes.map(|m| m as i64),
                nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
                device_requests,
                restart_policy: Some(DockerRestart {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Refuses a host port that something else already holds, before creating anything.
    fn check_ports(spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        for p in spec.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let addr = SocketAddr::new(spec.bind_address, p.host_port);
            if let Err(e) = std::net::TcpListener::bind(addr)
                && e.kind() == std::io::ErrorKind::AddrInUse
            {
                return Err(RuntimeError::PortConflict {
                    address: spec.bind_address,
                    port: p.host_port,
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    async fn start(&self, spec: &WorkloadSpec, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = server_message(&e);
                if msg.contains("port is already allocated")
                    || msg.contains("address already in use")
                {
                    let port = spec
                        .ports
                        .iter()
                        .find(|p| msg.contains(&format!(":{}", p.host_port)))
                        .or(spec.ports.first())
                        .map(|p| p.host_port)
                        .unwrap_or(0);
                    return Err(RuntimeError::PortConflict {
                        address: spec.bind_address,
                        port,
                        reason: msg,
                    });
                }
                Err(Self::docker_err(format!("start container {id}"))(e))
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // Already being removed.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(Self::docker_err(format!("remove container {id}"))(e)),
        }
    }

    fn ensure_monitor(&self, spec: &WorkloadSpec, id: &str) {
        let key = spec.owner.key();
        let Some(probe) = &spec.probe else {
            lock(&self.monitors).remove(&key);
            return;
        };
        if lock(&self.monitors)
            .get(&key)
            .is_some_and(|(cid, _)| cid == id)
        {
            return;
        }
        let host = if spec.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            spec.bind_address
        };
        let run = probe_fn(
            self.docker.clone(),
            id.to_string(),
            probe.action.clone(),
            host,
            probe.timeout,
        );
        let docker = self.docker.clone();
        let cid = id.to_string();
        let on_dead: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let docker = docker.clone();
            let cid = cid.clone();
            tracing::warn!(container = %cid, "liveness probe failed repeatedly; restarting container");
            tokio::spawn(async move {
                let _ = docker
                    .restart_container(
                        &cid,
                        None::<bollard::query_parameters::RestartContainerOptions>,
                    )
                    .await;
            });
        });
        let m = HealthMonitor::spawn(probe, run, Some(on_dead));
        // Announce readiness flips; the task ends with the monitor.
        let (mut rx, events, owner) = (m.subscribe(), self.events.clone(), key.clone());
        tokio::spawn(async move {
            let mut last = None;
            while rx.changed().await.is_ok() {
                let r = rx.borrow_and_update().clone();
                let state = if r.ready {
                    WorkloadState::Ready
                } else if r.ever_ready {
                    WorkloadState::Unhealthy
                } else {
                    WorkloadState::Running
                };
                if last.replace(state) != Some(state) {
                    let _ = events.send(WorkloadEvent {
                        owner: owner.clone(),
                        runtime: RuntimeKind::Container,
                        state,
                    });
                }
            }
        });
        lock(&self.monitors).insert(key, (id.to_string(), m));
    }

    /// The engine's container events of this stack, as workload events; reconnects after a
    /// second when the stream breaks. Ends when `out` is closed.
    async fn forward_engine_events(
        docker: Docker,
        stack_filter: String,
        out: tokio::sync::mpsc::Sender<WorkloadEvent>,
    ) {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![stack_filter]),
            (
                "event".to_string(),
                [
                    "start", "die", "stop", "kill", "destroy", "oom", "pause", "unpause",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ]);
        loop {
            let opts = bollard::query_parameters::EventsOptions {
                filters: Some(filters.clone()),
                ..Default::default()
            };
            let mut stream = docker.events(Some(opts));
            loop {
                tokio::select! {
                    _ = out.closed() => return,
                    next = stream.next() => match next {
                        Some(Ok(msg)) => {
                            if let Some(e) = engine_event(&msg)
                                && out.send(e).await.is_err()
                            {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "docker events stream broke");
                            break;
                        }
                        None => break,
                    }
                }
            }
            tokio::select! {
                _ = out.closed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn status_of(&self, c: &ContainerInspectResponse) -> WorkloadStatus {
        let labels = c
            .config
            .as_ref()
            .and_then(|cfg| cfg.labels.clone())
            .unwrap_or_default();
        let owner = OwnerKey(labels.get(LABEL_OWNER).cloned().unwrap_or_default());
        let st = c.state.clone().unwrap_or_default();
        let report = lock(&self.monitors)
            .get(&owner)
            .filter(|(cid, _)| Some(cid) == c.id.as_ref())
            .map(|(_, m)| m.report());
        let has_probe = report.is_some();
        let running = st.running == Some(true);
        let mut message = st.error.clone().filter(|e| !e.is_empty());
        let state = match st.status {
            Some(ContainerStateStatusEnum::RUNNING) => match &report {
                Some(r) if r.ready => WorkloadState::Ready,
                Some(r) if r.ever_ready => WorkloadState::Unhealthy,
                Some(_) => WorkloadState::Running,
                None => WorkloadState::Ready,
            },
            Some(ContainerStateStatusEnum::RESTARTING) => WorkloadState::CrashLoop,
            Some(ContainerStateStatusEnum::CREATED) => WorkloadState::Starting,
            Some(ContainerStateStatusEnum::REMOVING) => WorkloadState::Missing,
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                if lock(&self.stopped).contains(&owner) {
                    WorkloadState::Stopped
                } else {
                    WorkloadState::Exited
                }
            }
            _ => WorkloadState::Starting,
        };
        if let Some(r) = &report
            && running
            && r.last_error.is_some()
        {
            message = r.last_error.clone();
        }
        let endpoint = c
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.as_ref())
            .and_then(|pb| {
                let mut tcp: Vec<_> = pb.iter().filter(|(k, _)| k.ends_with("/tcp")).collect();
                tcp.sort_by_key(|(k, _)| k.split('/').next().and_then(|p| p.parse::<u16>().ok()));
                tcp.into_iter()
                    .find_map(|(_, b)| b.as_ref()?.first().cloned())
            })
            .and_then(|b| {
                let ip: IpAddr = b.host_ip.as_deref().unwrap_or("127.0.0.1").parse().ok()?;
                let ip = if ip.is_unspecified() {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    ip
                };
                let port = b.host_port?;
                Some(match ip {
                    IpAddr::V4(a) => format!("http://{a}:{port}"),
                    IpAddr::V6(a) => format!("http://[{a}]:{port}"),
                })
            });
        let limited = c
            .host_config
            .as_ref()
            .is_some_and(|h| h.memory.unwrap_or(0) > 0 || h.nano_cpus.unwrap_or(0) > 0);
        let restarts = c.restart_count.unwrap_or(0).max(0) as u32;
        WorkloadStatus {
            owner,
            runtime: RuntimeKind::Container,
            state,
            spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
            container_id: c.id.clone(),
            pid: st.pid.filter(|p| *p > 0).map(|p| p as u32),
            endpoint,
            restarts,
            last_exit_code: (!running || restarts > 0).then_some(st.exit_code).flatten(),
            healthy: if has_probe {
                report.and_then(|r| r.healthy())
            } else {
                None
            },
            limits_applied: Some(if limited { "docker" } else { "none" }.into()),
            message,
        }
    }

    async fn ensure_inner(&self, spec: &WorkloadSpec) -> Result<WorkloadStatus, RuntimeError> {
        let key = spec.owner.key();
        let hash = spec.spec_hash();
        let mut body = Self::create_body(spec)?;
        body.labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_STACK.to_string(), self.cfg.stack.clone());
        let _g = self.lock_owner(&key).await;
        let was_stopped = lock(&self.stopped).remove(&key);

        // Keep the one container with our hash (a running one first); remove every other.
        let mut owned = self.owned(&key).await?;
        owned.sort_by_key(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.running)
                .map(|r| !r)
                .unwrap_or(true)
        });
        let mut keep = None;
        for c in owned {
            let id = c.id.clone().unwrap_or_default();
            if c.state.as_ref().and_then(|s| s.status) == Some(ContainerStateStatusEnum::REMOVING) {
                // Being removed (e.g. `docker rm -f` behind our back): neither kept nor removed.
                continue;
            }
            let same = c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.as_ref())
                .and_then(|l| l.get(LABEL_SPEC_HASH))
                .is_some_and(|h| *h == hash);
            if same && keep.is_none() {
                keep = Some(c);
            } else {
                tracing::info!(container = %id, "removing a container with another spec");
                self.remove_container(&id).await?;
            }
        }

        let id = match keep {
            Some(c) => {
                let id = c.id.clone().unwrap_or_default();
                let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
                let restarting = c.state.as_ref().and_then(|s| s.restarting) == Some(true);
                let exit_code = c.state.as_ref().and_then(|s| s.exit_code);
                // Finished by its restart policy (not stopped by us): leave it, as the engine would.
                // A container that never started (its start failed) is not finished.
                let never_started = c.state.as_ref().and_then(|s| s.status)
                    == Some(ContainerStateStatusEnum::CREATED);
                let finished = !running
                    && !restarting
                    && !was_stopped
                    && !never_started
                    && match spec.restart {
                        RestartPolicy::Never => true,
                        RestartPolicy::OnFailure => exit_code == Some(0),
                        RestartPolicy::Always => false,
                    };
                if !running && !restarting && !finished {
                    tracing::info!(container = %id, "starting an adopted, stopped container");
                    self.start(spec, &id).await?;
                } else {
                    tracing::debug!(container = %id, "adopted running container");
                }
                id
            }
            None => {
                let Program::Container { image, .. } = &spec.program else {
                    unreachable!("create_body checked the program");
                };
                Self::check_ports(spec)?;
                self.ensure_image(image).await?;
                let name = self.name_for(&key);
                let created = match self
                    .docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        }),
                        body,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) if is_status(&e, 409) => {
                        // Ours, still being removed (or gone by now): try again shortly.
                        // Anyone else's: refuse.
                        let ours = match self
                            .docker
                            .inspect_container(&name, None::<InspectContainerOptions>)
                            .await
                        {
                            Ok(c) => c
                                .config
                                .and_then(|c| c.labels)
                                .is_some_and(|l| l.get(LABEL_OWNER) == Some(&key.0)),
                            Err(_) => true,
                        };
                        return Err(if ours {
                            RuntimeError::Spawn {
                                owner: key,
                                reason: format!("container {name} is still being removed"),
                            }
                        } else {
                            RuntimeError::NameTaken { name }
                        });
                    }
                    Err(e) => return Err(Self::docker_err(format!("create container {name}"))(e)),
                };
                tracing::info!(container = %created.id, "created container");
                // A start that fails leaves the container: the next `ensure` (after the
                // controller's backoff) starts it again instead of creating another.
                self.start(spec, &created.id).await?;
                created.id
            }
        };
        lock(&self.known).insert(key.clone());
        self.ensure_monitor(spec, &id);
        let c = self
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .map_err(Self::docker_err(format!("inspect {id}")))?;
        Ok(self.status_of(&c))
    }

    async fn stop_inner(
        &self,
        key: &OwnerKey,
        grace: Duration,
        forget: bool,
    ) -> Result<(), RuntimeError> {
        let _g = self.lock_owner(key).await;
        lock(&self.monitors).remove(key);
        for c in self.owned(key).await? {
            let id = c.id.clone().unwrap_or_default();
            if c.state.as_ref().and_then(|s| s.running) == Some(true) {
                let r = self
                    .docker
                    .stop_container(
                        &id,
                        Some(StopContainerOptions {
                            t: Some(grace.as_secs().max(1) as i32),
                            signal: None,
                        }),
                    )
                    .await;
                match r {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 304) || is_status(&e, 404) => {}
                    Err(e) => return Err(Self::docker_err(format!("stop container {id}"))(e)),
                }
            }
            if forget {
                self.remove_container(&id).await?;
            }
        }
        if forget {
            lock(&self.stopped).remove(key);
            lock(&self.known).remove(key);
        } else {
            lock(&self.stopped).insert(key.clone());
        }
        Ok(())
    }
}

fn probe_fn(
    docker: Docker,
    id: String,
    action: ProbeAction,
    host: IpAddr,
    timeout: Duration,
) -> ProbeFn {
    Arc::new(move || {
        let docker = docker.clone();
        let id = id.clone();
        let action = action.clone();
        async move {
            match &action {
                ProbeAction::Exec { argv } => exec_probe(&docker, &id, argv).await,
                _ => probe_once(&action, host, timeout).await,
            }
        }
        .boxed()
    })
}

async fn exec_probe(docker: &Docker, id: &str, argv: &[String]) -> Result<(), String> {
    let exec = docker
        .create_exec(
            id,
            bollard::exec::CreateExecOptions {
                cmd: Some(argv.to_vec()),
                attach_stdout: Some(false),
                attach_stderr: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("exec {argv:?}: {}", server_message(&e)))?;
    docker
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| format!("exec {argv:?}: {}", server_message(&e)))?;
    loop {
        let i = docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| format!("exec {argv:?}: {}", server_message(&e)))?;
        if i.running != Some(true) {
            return match i.exit_code {
                Some(0) => Ok(()),
                c => Err(format!("exec {argv:?}: exit code {c:?}")),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A container event of the engine as a workload event: `None` for containers without our owner
/// label and for actions that change nothing we report.
fn engine_event(msg: &bollard::models::EventMessage) -> Option<WorkloadEvent> {
    let actor = msg.actor.as_ref()?;
    let owner = actor.attributes.as_ref()?.get(LABEL_OWNER)?;
    let state = match msg.action.as_deref()? {
        "start" | "unpause" => WorkloadState::Running,
        "die" | "kill" | "oom" => WorkloadState::Exited,
        "stop" | "pause" => WorkloadState::Stopped,
        "destroy" => WorkloadState::Missing,
        _ => return None,
    };
    Some(WorkloadEvent {
        owner: OwnerKey(owner.clone()),
        runtime: RuntimeKind::Container,
        state,
    })
}

/// The engine's message without bollard's "Docker responded with status code" prefix.
fn server_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn explain_connect(e: &BollardError) -> String {
    let s = e.to_string();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(x) = src {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::PermissionDenied => format!(
                    "permission denied on the engine's socket ({io}); add your user to the docker group"
                ),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    format!("no engine is listening ({io})")
                }
                _ => io.to_string(),
            };
        }
        src = x.source();
    }
    s
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Container
    }

    fn ensure<'a>(
        &'a self,
        spec: &'a WorkloadSpec,
    ) -> BoxFuture<'a, Result<WorkloadStatus, RuntimeError>> {
        let span = tracing::info_span!("ensure", owner = %spec.owner.key(), runtime = "docker");
        self.ensure_inner(spec).instrument(span).boxed()
    }

    fn inspect<'a>(
        &'a self,
        owner: &'a OwnerKey,
    ) -> BoxFuture<'a, Result<Option<WorkloadStatus>, RuntimeError>> {
        async move {
            let owned = self.owned(owner).await?;
            match owned.first() {
                Some(c) => Ok(Some(self.status_of(c))),
                None if lock(&self.known).contains(owner) => Ok(Some(WorkloadStatus {
                    owner: owner.clone(),
                    runtime: RuntimeKind::Container,
                    state: WorkloadState::Missing,
                    spec_hash: String::new(),
                    container_id: lock(&self.monitors).get(owner).map(|(id, _)| id.clone()),
                    pid: None,
                    endpoint: None,
                    restarts: 0,
                    last_exit_code: None,
                    healthy: None,
                    limits_applied: None,
                    message: Some("the container was removed outside of this program".into()),
                })),
                None => Ok(None),
            }
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
            let owned = self.owned(owner).await?;
            let Some(id) = owned.first().and_then(|c| c.id.clone()) else {
                return Err(RuntimeError::NotFound {
                    owner: owner.clone(),
                    runtime: "docker",
                });
            };
            let stream = self
                .docker
                .logs(
                    &id,
                    Some(LogsOptions {
                        follow: opts.follow,
                        stdout: true,
                        stderr: true,
                        tail: opts
                            .tail
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "all".into()),
                        ..Default::default()
                    }),
                )
                .map(move |r| {
                    r.map(|o| o.into_bytes())
                        .map_err(|source| RuntimeError::Docker {
                            context: format!("logs of {id}"),
                            source,
                        })
                });
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn events(&self) -> EventStream {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(Self::forward_engine_events(
            self.docker.clone(),
            self.stack_filter(),
            tx.clone(),
        ));
        let mut probes = super::broadcast_stream(&self.events);
        tokio::spawn(async move {
            while let Some(e) = probes.next().await {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<WorkloadStatus>, RuntimeError>> {
        async move {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![LABEL_OWNER.to_string(), self.stack_filter()],
            )]);
            let all = self.inspect_listed(filters).await?;
            let mut out: Vec<WorkloadStatus> = all.iter().map(|c| self.status_of(c)).collect();
            out.sort_by(|a, b| a.owner.cmp(&b.owner));
            Ok(out)
        }
        .boxed()
    }

    /// Memory from the engine's stats (usage less the page cache, as `docker stats` shows it);
    /// the start time from the container's state. GPU memory is unknown for containers.
    fn usage<'a>(&'a self, status: &'a WorkloadStatus) -> BoxFuture<'a, super::usage::Usage> {
        async move {
            let Some(id) = status.container_id.as_deref() else {
                return Default::default();
            };
            let opts = bollard::query_parameters::StatsOptionsBuilder::new()
                .stream(false)
                .one_shot(true)
                .build();
            let stats = tokio::time::timeout(
                self.cfg.connect_timeout,
                self.docker.stats(id, Some(opts)).next(),
            )
            .await
            .ok()
            .flatten()
            .and_then(Result::ok);
            let memory_bytes = stats.and_then(|s| s.memory_stats).and_then(|m| {
                let cache = m.stats.as_ref().and_then(|st| {
                    st.get("inactive_file")
                        .or_else(|| st.get("total_inactive_file"))
                        .copied()
                });
                m.usage.map(|u| u.saturating_sub(cache.unwrap_or(0)))
            });
            let started_at = self
                .docker
                .inspect_container(id, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|c| c.state?.started_at)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            super::usage::Usage {
                memory_bytes,
                vram_bytes: None,
                started_at,
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Kind, ObjectName};
    use crate::runtime::{Owner, Port};

    #[test]
    fn create_body_carries_labels_localhost_ports_and_gpu_requests() {
        let owner = Owner::new(Kind::Module, ObjectName::new("gpu").unwrap(), "u1");
        let mut spec = WorkloadSpec::container(owner, "img:1");
        spec.ports = vec![Port {
            container_port: 8000,
            host_port: 18000,
            protocol: Protocol::Tcp,
        }];
        spec.limits.gpus = Some(GpuRequest::All);
        let body = DockerRuntime::create_body(&spec).unwrap();
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_OWNER], "Module/gpu");
        assert_eq!(labels[LABEL_SPEC_HASH], spec.spec_hash());
        let hc = body.host_config.unwrap();
        let b = &hc.port_bindings.unwrap()["8000/tcp"].clone().unwrap()[0];
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b.host_port.as_deref(), Some("18000"));
        let dr = &hc.device_requests.unwrap()[0];
        assert_eq!(dr.driver.as_deref(), Some("nvidia"));
        assert_eq!(dr.count, Some(-1));
        assert_eq!(dr.capabilities, Some(vec![vec!["gpu".to_string()]]));

        spec.limits.gpus = Some(GpuRequest::Devices(vec!["GPU-1".into()]));
        let hc = DockerRuntime::create_body(&spec)
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(
            hc.device_requests.unwrap()[0].device_ids,
            Some(vec!["GPU-1".to_string()])
        );
        assert_eq!(
            DockerRuntime::container_name(&spec.owner.key()),
            "las-module-gpu"
        );
    }

    #[test]
    fn relative_volume_paths_are_refused() {
        let owner = Owner::new(Kind::Module, ObjectName::new("v").unwrap(), "u1");
        let mut spec = WorkloadSpec::container(owner, "img:1");
        spec.volumes = vec![crate::api::module::VolumeMount {
            host_path: "relative".into(),
            container_path: "/data".into(),
            read_only: false,
        }];
        let e = DockerRuntime::create_body(&spec).unwrap_err();
        assert!(e.to_string().contains("must be absolute"), "{e}");
    }
}
