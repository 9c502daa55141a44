//! `lasctl daemon`: the controllers, the watched directories and the HTTP API in one process.
//!
//! # Guarantees
//! - One daemon per `LAS_HOME` (an exclusive lock on `run/lasd.lock`).
//! - SIGTERM/SIGINT: stop accepting work, finish in-flight reconciles and writes, leave workloads
//!   running (the next start adopts them) unless `--stop-workloads-on-exit`. A second signal exits
//!   at once.
//! - The bearer token in `run/token` (0600) is created at start; TCP clients must send it for
//!   everything but `/healthz`, and `/metrics` and `/v1` from loopback (see `interfaces::http`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::CliError;
use super::logging::{REPEAT_WINDOW, STATE_TARGET};
use crate::api::Kind;
use crate::artifacts::models::ModelStore;
use crate::control::controllers::model::ModelReconciler;
use crate::control::controllers::module::{ModuleReconciler, serving_key};
use crate::control::controllers::{
    self, MetricsSink, Reconciler, SchedulerConfig, SharedStore, Trigger,
};
use crate::control::hardware::HardwareProfile;
use crate::control::sources::{SourcesConfig, watch_sources, watch_store};
use crate::control::store::Store;
use crate::home::LasHome;
use crate::interfaces::http::{
    Access, ApiContext, BackendsInfo, ByteStream, DaemonInfo, DockerInfo, LogOptions, LogsError,
    Metrics, RuntimeInfo, Server, built_in_engines, ensure_token, socket_path,
};
use crate::runtime::docker::DockerConfig;
use crate::runtime::docker_lazy::ReconnectingDocker;
use crate::runtime::native::NativeRuntime;
use crate::runtime::{OwnerKey, Runtime};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// A directory of desired state to keep applied (with prune scoped to it). Repeatable.
    #[arg(long = "watch")]
    pub watch: Vec<PathBuf>,
    /// Address of the management API and the OpenAI endpoint.
    #[arg(long, env = "LAS_LISTEN", default_value = "127.0.0.1:7411")]
    pub listen: SocketAddr,
    /// Stop every workload when the daemon exits (default: leave them running, adopted next start).
    #[arg(long)]
    pub stop_workloads_on_exit: bool,
    /// Seconds between full resyncs of every object.
    #[arg(long, env = "LAS_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,
    /// Seconds between full re-reads of every watched directory (file events apply at once).
    #[arg(long, env = "LAS_SOURCE_RESCAN_SECONDS", default_value_t = 30)]
    pub source_rescan_seconds: u64,
    /// Kept for scripts: the bearer token ($LAS_HOME/run/token, mode 0600) is now always created.
    #[arg(long, hide = true)]
    pub generate_token: bool,
    /// Another host name (or address) clients may use to reach the API, besides localhost,
    /// 127.0.0.1, [::1] and the --listen address. Repeatable. Anything else is refused (403).
    #[arg(long = "allow-host", env = "LAS_ALLOW_HOSTS", value_delimiter = ',')]
    pub allow_hosts: Vec<String>,
    /// Require the bearer token on the OpenAI endpoint `/v1` too (by default loopback clients
    /// may generate text without it, as with Ollama).
    #[arg(long, env = "LAS_V1_REQUIRES_TOKEN")]
    pub v1_requires_token: bool,
    /// Stack generations kept in the history (never fewer than the model GC's window of 5).
    #[arg(long, env = "LAS_KEEP_GENERATIONS", default_value_t = 50)]
    pub keep_generations: usize,
    /// Event rows kept (a repeated event is one row with a count).
    #[arg(long, env = "LAS_KEEP_EVENTS", default_value_t = 5000)]
    pub keep_events: usize,
    /// Days an event is kept after it was last seen.
    #[arg(long, env = "LAS_EVENT_RETENTION_DAYS", default_value_t = 7)]
    pub event_retention_days: u64,
}

impl MetricsSink for Metrics {
    fn reconciled(&self, kind: Kind, ok: bool) {
        self.record_reconcile(kind.as_str(), ok);
    }
    fn queue_depth(&self, n: usize) {
        self.set_queue_depth(n as i64);
    }
}

/// What only the daemon knows, for `/api/v1/runtime`, `/api/v1/backends` and module logs.
struct Info {
    profile: HardwareProfile,
    store: SharedStore,
    native: Arc<dyn Runtime>,
    docker: Option<Arc<dyn Runtime>>,
    docker_link: Arc<ReconnectingDocker>,
}

impl DaemonInfo for Info {
    fn runtime(&self) -> BoxFuture<'_, RuntimeInfo> {
        Box::pin(async move {
            let profile = self.profile.clone();
            let tier = self
                .store
                .with(move |s| {
                    let mut policies: Vec<crate::control::policy::NamedPolicy> = s
                        .list(Some(Kind::Policy), &Default::default())
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|o| match o.typed_spec() {
                            Ok(crate::api::Spec::Policy(spec)) => {
                                Some(crate::control::policy::NamedPolicy {
                                    name: o.name.to_string(),
                                    spec,
                                })
                            }
                            _ => None,
                        })
                        .collect();
                    if policies.is_empty() {
                        policies = crate::control::policy::default_policies().unwrap_or_default();
                    }
                    crate::control::policy::select_tier(&policies, &profile).ok()
                })
                .await;
            RuntimeInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                hardware: self.profile.to_json(),
                tier: tier.as_ref().map(|t| t.tier.clone()),
                capabilities: tier.as_ref().map(|t| t.capabilities.clone()),
                tier_reason: tier.map(|t| t.reason),
            }
        })
    }

    fn backends(&self) -> BoxFuture<'_, BackendsInfo> {
        Box::pin(async move {
            BackendsInfo {
                docker: DockerInfo {
                    reachable: *self.docker_link.availability().borrow(),
                    version: None,
                    error: self.docker_link.last_error(),
                },
                engines: built_in_engines(),
            }
        })
    }

    fn logs(&self, name: &str, opts: LogOptions) -> BoxFuture<'_, Result<ByteStream, LogsError>> {
        let name = name.to_string();
        Box::pin(async move {
            // The workload that serves now (a replacement runs in the other slot until Ready).
            let n = name.clone();
            let owner = self
                .store
                .with(move |s| s.get(Kind::Module, &n).ok())
                .await
                .map(|o| serving_key(&o))
                .unwrap_or_else(|| OwnerKey::of(Kind::Module, &name, 0));
            let o = crate::runtime::LogOptions {
                tail: opts.tail,
                follow: opts.follow,
            };
            let mut last = None;
            for rt in std::iter::once(&self.native).chain(self.docker.iter()) {
                if matches!(rt.inspect(&owner).await, Ok(Some(_))) {
                    match rt.logs(&owner, o).await {
                        Ok(s) => {
                            let s: ByteStream = Box::pin(
                                s.map_err(|e| std::io::Error::other(e.to_string())).boxed(),
                            );
                            return Ok(s);
                        }
                        Err(e) => last = Some(e.to_string()),
                    }
                }
            }
            Err(match last {
                Some(message) => LogsError::Backend { name, message },
                None => LogsError::NoLogs(name),
            })
        })
    }

    fn workloads(&self) -> BoxFuture<'_, Vec<crate::interfaces::http::ps::Workload>> {
        Box::pin(async move {
            use crate::runtime::WorkloadState as S;
            let mut out = Vec::new();
            for rt in std::iter::once(&self.native).chain(self.docker.iter()) {
                for w in rt.list().await.unwrap_or_default() {
                    let Some((Kind::Module, name)) = w.owner.object() else {
                        continue;
                    };
                    if matches!(w.state, S::Stopped | S::Exited | S::Missing) {
                        continue;
                    }
                    let usage = rt.usage(&w).await;
                    out.push(crate::interfaces::http::ps::Workload {
                        module: name.to_string(),
                        slot: w
                            .owner
                            .as_str()
                            .rsplit_once('@')
                            .and_then(|(_, s)| s.parse().ok())
                            .unwrap_or(0),
                        runtime: serde_json::to_value(w.runtime)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        state: w.state.to_string(),
                        pid: w.pid,
                        container_id: w.container_id.clone(),
                        endpoint: w.endpoint.clone(),
                        started_at: usage
                            .started_at
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                        memory_bytes: usage.memory_bytes,
                        vram_bytes: usage.vram_bytes,
                        restarts: w.restarts,
                        requests: 0,
                    });
                }
            }
            out
        })
    }
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

pub fn run(args: DaemonArgs) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(err)?;
    rt.block_on(serve(args))
}

async fn serve(args: DaemonArgs) -> Result<(), CliError> {
    let home = LasHome::from_env()?;
    home.ensure()?;
    // Every TCP client but /healthz, /metrics and /v1 on loopback must send this token: any local
    // user or web page could otherwise drive the daemon (see interfaces::http's auth module).
    let token = ensure_token(&home).map_err(err)?;
    let mut lock = super::lock::DaemonLock::acquire(&home, super::lock::LOCK_WAIT)?;
    for d in &args.watch {
        if !d.is_dir() {
            return Err(err(format!("--watch {}: not a directory", d.display())));
        }
    }
    let mut opened = Store::open(&home.state_db())?;
    // Workflow runs a dead daemon left in flight are finished records before anyone can ask.
    match crate::control::workflows::fail_interrupted(&mut opened) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "workflow runs interrupted by the restart marked Failed"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot mark interrupted workflow runs"),
    }
    let store = SharedStore::new(opened);
    lock.record_db(&home.state_db())?;
    let db_identity = db_identity(&home.state_db());
    let models = ModelStore::open(&home).map_err(err)?;
    let native: Arc<dyn Runtime> = Arc::new(NativeRuntime::open(&home).map_err(err)?);
    let docker_cfg = DockerConfig {
        stack: home.root().display().to_string(),
        ..Default::default()
    };
    // The engine may start after the daemon, stop and come back: the link connects on use and
    // is checked every few seconds below; container modules wait for it as a condition.
    let docker_link = Arc::new(ReconnectingDocker::new(docker_cfg));
    if let Err(e) = docker_link.check().await {
        tracing::warn!(error = %e, "no Docker engine yet: container modules will wait for one");
    }
    let docker: Option<Arc<dyn Runtime>> = Some(docker_link.clone());
    let profile = crate::control::hardware::probe_from_env()
        .probe()
        .map_err(err)?;
    let exe = std::env::current_exe().map_err(err)?;
    let metrics = Arc::new(Metrics::new());
    // Blobs no Model of the last generations refers to go: a deleted Model's bytes are collected,
    // and a rollback within the window needs no download.
    {
        let (s, m) = (store.clone(), models.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            loop {
                let m2 = m.clone();
                let r = s
                    .with(move |st| {
                        crate::control::model_gc::collect_model_garbage(
                            st,
                            &m2,
                            crate::control::model_gc::DEFAULT_GC_GENERATIONS,
                        )
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "model garbage collection failed");
                }
                tokio::time::sleep(Duration::from_secs(300)).await;
            }
        });
    }
    // History and events are kept bounded (at start, then every 5 minutes).
    {
        let s = store.clone();
        let r = crate::control::retention::Retention {
            generations: args.keep_generations,
            events: args.keep_events,
            event_max_age: Duration::from_secs(args.event_retention_days.saturating_mul(86400)),
        };
        tokio::spawn(async move {
            loop {
                match s
                    .with(move |st| crate::control::retention::enforce(st, &r))
                    .await
                {
                    Ok(p) if p != Default::default() => {
                        tracing::info!(
                            generations = p.generations,
                            events = p.events,
                            "history and events pruned"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot prune history and events"),
                }
                tokio::time::sleep(Duration::from_secs(300)).await;
            }
        });
    }
    let wasm: Arc<dyn crate::sandbox::Engine> = Arc::new(crate::sandbox::WasmiEngine::new());
    // Exec plugins: supervised by the runtime; the host and the activation controller reach
    // them only through this seam.
    let exec: Arc<dyn crate::runtime::plugin_exec::ExecPlugins> =
        Arc::new(crate::runtime::plugin_exec::ExecBridge::new(
            crate::runtime::plugin_exec::ExecConfig::for_home(&home),
        ));
    let plugins = Arc::new(
        crate::control::plugins::PluginHost::new(home.clone(), wasm.clone())
            .with_exec(exec.clone()),
    );
    let admission = crate::control::admission::for_daemon(Some(plugins.clone())).map_err(err)?;
    // The profile the API shows carries the facts of the probes active at start.
    let profile = {
        let objects = store
            .with(|s| crate::control::plugins::plugin_objects(s))
            .await
            .unwrap_or_default();
        let runner = crate::control::probes::ProbeRunner::new(plugins.clone());
        tokio::task::spawn_blocking(move || runner.profile(&profile, &objects))
            .await
            .map_err(err)?
    };
    let reconcilers: Vec<Arc<dyn Reconciler>> = vec![
        Arc::new(
            ModelReconciler::new(store.clone(), models.clone(), Duration::from_secs(600))
                .with_limits(admission.clone())
                .with_plugins(plugins.clone()),
        ),
        Arc::new(ModuleReconciler {
            store: store.clone(),
            native: native.clone(),
            docker: docker.clone(),
            admission: admission.clone(),
            catalog: Arc::new(
                crate::artifacts::catalog::Catalog::from_env()
                    .map_err(err)?
                    .catalog,
            ),
            programs: crate::artifacts::binaries::BinaryStore::new(&home, models.clone()),
            engine_exe: exe,
            grace: Duration::from_secs(10),
            gpus_present: !profile.gpus.is_empty(),
            cleaned: Default::default(),
        }),
        Arc::new(crate::control::controllers::plugin::PluginReconciler {
            store: store.clone(),
            models: models.clone(),
            engine: wasm.clone(),
            admission: Some(admission.clone()),
        }),
        Arc::new(
            crate::control::controllers::plugin::PluginActivationReconciler {
                store: store.clone(),
                home: home.clone(),
                engine: wasm.clone(),
                host: Some(plugins.clone()),
                exec: Some(exec.clone()),
                admission: Some(admission.clone()),
            },
        ),
    ];

    // Store changes (from this process, the CLI or the API) wake the controllers and the API's
    // event streams.
    let (tx, rx) = mpsc::channel::<Trigger>(256);
    let (changes_tx, changes_rx) = watch::channel(0u64);
    let changes_tx = Arc::new(changes_tx);
    let (t2, c2) = (tx.clone(), changes_tx.clone());
    let store_watch = watch_store(home.root(), move || {
        // A pending StoreChanged covers this one: dropping on a full channel is fine.
        let _ = t2.try_send(Trigger::StoreChanged);
        c2.send_modify(|v| *v += 1);
    })
    .map_err(err)?;

    // Runtime events (a process exits, a container is removed behind our back, a probe flips)
    // reconcile the owning Module at once.
    let forwarders: Vec<tokio::task::JoinHandle<()>> = std::iter::once(&native)
        .chain(docker.iter())
        .map(|rt| {
            let (mut events, t) = (rt.events(), tx.clone());
            tokio::spawn(async move {
                while let Some(e) = events.next().await {
                    if let Some((Kind::Module, name)) = e.owner.object()
                        && t.send(Trigger::Object((Kind::Module, name.to_string())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();

    // When the engine becomes available (it started after us, or came back), every Module is
    // reconciled: events of the time it was away are lost, and waiting ones can start now.
    let engine_watch = {
        let (link, t, s) = (docker_link.clone(), tx.clone(), store.clone());
        tokio::spawn(async move {
            let mut up = link.availability();
            loop {
                let _ = link.check().await;
                if up.has_changed().unwrap_or(false) && *up.borrow_and_update() {
                    let modules = s
                        .with(|st| st.list(Some(Kind::Module), &Default::default()))
                        .await
                        .unwrap_or_default();
                    for m in modules {
                        if t.send(Trigger::Object((Kind::Module, m.name.to_string())))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let info = Arc::new(Info {
        profile,
        store: store.clone(),
        native: native.clone(),
        docker: docker.clone(),
        docker_link: docker_link.clone(),
    });
    let (source_changes, db_changes, state_changes) =
        (changes_rx.clone(), changes_rx.clone(), changes_rx.clone());
    // Every recorded event to the active event sinks, off the reconcile path.
    tokio::spawn(tracing::Instrument::instrument(
        crate::control::eventbus::run(store.clone(), plugins.clone(), changes_rx.clone()),
        tracing::info_span!("event_bus"),
    ));
    let ctx = ApiContext::new(home.clone(), metrics.clone(), changes_rx, info)
        .with_token(token)
        .with_access(Access::new(&args.allow_hosts, !args.v1_requires_token))
        .with_plugins(plugins.clone());
    let access = ctx.access.clone();
    let health = ctx.health.clone();
    health.require_db();
    let server = Server::bind(ctx, args.listen, socket_path(&home))
        .await
        .map_err(err)?;
    // Where this daemon is, for clients that must know whether a daemon serves this home.
    super::daemon_record::DaemonRecord {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        listen: server
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| args.listen.to_string()),
        socket: socket_path(&home),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        watch: args.watch.clone(),
    }
    .write(&home)?;
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(server.run(async move {
        let _ = stop_http_rx.await;
    }));

    let config = SchedulerConfig {
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        ..Default::default()
    };
    let scheduler = tokio::spawn(controllers::run(
        store.clone(),
        reconcilers,
        rx,
        config,
        metrics.clone() as Arc<dyn MetricsSink>,
    ));
    let mut sources_task = None;
    if !args.watch.is_empty() {
        let (s, dirs, t) = (store.clone(), args.watch.clone(), tx.clone());
        let config = SourcesConfig {
            rescan: Duration::from_secs(args.source_rescan_seconds.max(1)),
            ..Default::default()
        };
        sources_task = Some(tokio::spawn(async move {
            if let Err(e) = watch_sources(s, dirs, config, t, Some(source_changes)).await {
                tracing::error!(error = %e, "watching directories failed");
            }
        }));
    }
    // Workloads by state, for /metrics.
    {
        let (n, d, m) = (native.clone(), docker.clone(), metrics.clone());
        let period = Duration::from_secs(args.resync_seconds.max(1));
        tokio::spawn(async move {
            loop {
                let mut by: std::collections::BTreeMap<String, i64> = Default::default();
                for rt in std::iter::once(&n).chain(d.iter()) {
                    for w in rt.list().await.unwrap_or_default() {
                        *by.entry(w.state.to_string().to_lowercase()).or_default() += 1;
                    }
                }
                m.set_workloads(by);
                tokio::time::sleep(period).await;
            }
        });
    }
    eprintln!(
        "lasctl daemon: state {}; API on http://{} and {}; watching {} director{}",
        home.root().display(),
        args.listen,
        socket_path(&home).display(),
        args.watch.len(),
        if args.watch.len() == 1 { "y" } else { "ies" }
    );
    eprintln!(
        "lasctl daemon: web console (one-time link; `lasctl ui` prints a new one): {}/ui/login?token={}",
        access.base_url(),
        access.mint_login()
    );

    // One line per state change on stderr (the events the controllers record).
    tokio::spawn(log_state_changes(store.clone(), state_changes));

    // The state database under us: deleted or replaced → stop (a restart opens the current one);
    // unreadable → /healthz says so.
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(1);
    tokio::spawn(watch_state_db(
        home.state_db(),
        db_identity,
        store.clone(),
        health,
        db_changes,
        fatal_tx,
    ));

    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(err)?;
    let mut fatal = None;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        Some(reason) = fatal_rx.recv() => fatal = Some(reason),
    }
    eprintln!("lasctl daemon: shutting down (a second signal exits at once)");
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("signal");
        let mut int = signal(SignalKind::interrupt()).expect("signal");
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
    // Stop accepting, then let in-flight reconciles and writes finish.
    let _ = stop_http_tx.send(());
    // The scheduler ends once every trigger sender is gone and in-flight reconciles finish.
    if let Some(t) = sources_task {
        t.abort();
        let _ = t.await;
    }
    drop(store_watch);
    engine_watch.abort();
    let _ = engine_watch.await;
    for f in forwarders {
        f.abort();
        let _ = f.await;
    }
    drop(tx);
    let _ = scheduler.await;
    let _ = http.await;
    super::daemon_record::DaemonRecord::remove(&home);
    // Exec plugins talk to this process through pipes: they cannot outlive it usefully.
    {
        let exec = exec.clone();
        let _ = tokio::task::spawn_blocking(move || exec.stop_all()).await;
    }
    if let Some(reason) = fatal {
        return Err(err(reason));
    }
    if args.stop_workloads_on_exit {
        for rt in std::iter::once(&native).chain(docker.iter()) {
            if let Ok(all) = rt.list().await {
                for w in all {
                    let _ = rt.remove(&w.owner, Duration::from_secs(10)).await;
                }
            }
        }
    } else {
        say_what_keeps_running(&native, docker.as_ref()).await;
    }
    Ok(())
}

/// On exit without `--stop-workloads-on-exit`: which workloads keep running, and how to stop them.
async fn say_what_keeps_running(native: &Arc<dyn Runtime>, docker: Option<&Arc<dyn Runtime>>) {
    use crate::runtime::WorkloadState as S;
    let mut running = Vec::new();
    let mut modules = std::collections::BTreeSet::new();
    for rt in std::iter::once(native).chain(docker) {
        for w in rt.list().await.unwrap_or_default() {
            if !matches!(w.state, S::Starting | S::Running | S::Ready | S::Unhealthy) {
                continue;
            }
            let what = match (&w.pid, &w.container_id) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, Some(id)) => format!("container {}", &id[..id.len().min(12)]),
                (None, None) => format!("{:?}", w.runtime).to_lowercase(),
            };
            let name = match w.owner.object() {
                Some((kind, name)) => {
                    modules.insert(name.to_string());
                    format!("{}/{name}", kind.as_str().to_lowercase())
                }
                None => w.owner.as_str().to_string(),
            };
            running.push(format!("{name} ({what})"));
        }
    }
    if running.is_empty() {
        return;
    }
    let one = running.len() == 1;
    eprintln!(
        "lasctl daemon: {} workload{} running: {}; the next `lasctl daemon` on this home adopts {}",
        running.len(),
        if one { " keeps" } else { "s keep" },
        running.join(", "),
        if one { "it" } else { "them" },
    );
    eprintln!(
        "lasctl daemon: to stop {}, start the daemon with --stop-workloads-on-exit and stop it \
         again, or delete {} while a daemon runs: lasctl delete module {}",
        if one { "it" } else { "them" },
        if one { "its Module" } else { "their Modules" },
        modules.into_iter().collect::<Vec<_>>().join(" ")
    );
}

/// One line per state change: every event the controllers record (a Model verified, a Module
/// started, Ready, restarted, stalled, ...), at INFO (Normal) or WARN (Warning), on the target
/// [`STATE_TARGET`]. A repeated event (its row's count grows) is shown at most once per
/// [`REPEAT_WINDOW`], with its count.
async fn log_state_changes(store: SharedStore, mut changes: watch::Receiver<u64>) {
    use crate::control::store::{EventType, event_series};
    let mut after = store
        .with(|s| s.events(None, 0, 1))
        .await
        .ok()
        .and_then(|e| e.last().map(|e| e.id))
        .unwrap_or(0);
    let mut shown: std::collections::HashMap<(String, String, String, String), Instant> =
        Default::default();
    while changes.changed().await.is_ok() {
        let a = after;
        let Ok(events) = store.with(move |s| s.events(None, a, 1000)).await else {
            continue;
        };
        let now = Instant::now();
        shown.retain(|_, t| now.duration_since(*t) < REPEAT_WINDOW);
        for e in events {
            after = after.max(e.id);
            let key = (
                e.kind.clone(),
                e.name.clone(),
                e.reason.clone(),
                event_series(&e.message),
            );
            if e.count > 1 && shown.contains_key(&key) {
                continue;
            }
            shown.insert(key, now);
            let object = format!("{}/{}", e.kind.to_lowercase(), e.name);
            let times = if e.count > 1 {
                format!(" (x{})", e.count)
            } else {
                String::new()
            };
            match e.type_ {
                EventType::Normal => {
                    tracing::info!(target: STATE_TARGET, "{object} {}: {}{times}", e.reason, e.message)
                }
                EventType::Warning => {
                    tracing::warn!(target: STATE_TARGET, "{object} {}: {}{times}", e.reason, e.message)
                }
            }
        }
    }
}

fn db_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Checks the state database every second and whenever the store changes: the file must still be
/// the one opened (else `fatal` gets the reason and the daemon stops), and readable (else
/// `/healthz` answers 503 with the reason until it is again).
async fn watch_state_db(
    path: PathBuf,
    opened: Option<(u64, u64)>,
    store: SharedStore,
    health: crate::interfaces::http::Health,
    mut changes: watch::Receiver<u64>,
    fatal: mpsc::Sender<String>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut checks = 0u64;
    loop {
        // A store change (perhaps a CLI that just created a new file) checks the file at once; the
        // reads through the store are left to the tick, so busy stores cost nothing more.
        let on_tick = tokio::select! {
            _ = tick.tick() => true,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
        };
        let now = db_identity(&path);
        if now != opened {
            let reason = format!(
                "state database {} was {} while the daemon ran: stopping so that no write goes \
                 to a file nobody reads; start the daemon again to use the current one",
                path.display(),
                if now.is_none() { "deleted" } else { "replaced" }
            );
            tracing::error!(path = %path.display(), "{reason}");
            health.fail(reason.clone());
            let _ = fatal.send(reason).await;
            return;
        }
        if !on_tick {
            continue;
        }
        // A cheap read every second, a full page check every 10th.
        checks += 1;
        let full = checks % 10 == 1;
        let r = store
            .with(move |s| {
                s.current_resource_version()?;
                if full {
                    let verdict = s.integrity_check()?;
                    if verdict != "ok" {
                        return Ok(Some(verdict));
                    }
                }
                Ok::<_, crate::control::store::StoreError>(None)
            })
            .await;
        let failure = match r {
            Ok(None) => None,
            Ok(Some(v)) => Some(format!(
                "state database {} fails its integrity check: {v}",
                path.display()
            )),
            Err(e) => Some(format!(
                "state database {} is unreadable: {e}",
                path.display()
            )),
        };
        match failure {
            Some(f) if health.failure().as_ref() != Some(&f) => {
                tracing::error!(path = %path.display(), "{f}; restore it from a backup or move it away and re-apply");
                let msg = f.clone();
                store
                    .with(move |s| {
                        let _ = s.record_event(
                            "Daemon",
                            "state",
                            crate::control::store::EventType::Warning,
                            "StateDatabaseCorrupt",
                            &msg,
                        );
                    })
                    .await;
                health.fail(f);
            }
            Some(_) => {}
            None if full => health.clear(),
            None => {}
        }
    }
}
